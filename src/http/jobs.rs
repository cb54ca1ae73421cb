//! Job lifecycle and Strøm's API.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/sources/{id}/complete`, `POST /worker/jobs/{id}/complete` | `{"status": "completed"\|"failed"}`: the file is written through every line published so far, synced and closed |
//! | `POST /worker/jobs/{id}/logs` | Strøm's worker shape: `{"step_name": "build", "lines": [{"ts", "stream", "line"}]}` |
//! | `GET /api/jobs/{id}/logs` | `{"logs": "<JSONL>"}` |
//! | `GET /api/jobs/{id}/steps/{step}/logs` | the same, one step (`_server`: router-side events) |
//! | `GET /api/jobs/{id}/logs/stream` | WebSocket: every line so far, then live, one JSONL line per text frame, with no gap |

use super::ws::{Message, Upgrade};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_router::{Channel, Delivery, Envelope, Filter, MissedNotice, Start, validate_source_id};
use sluice_store::persister::Line;
use warp::Filter as _;
use warp::http::StatusCode;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response};

use super::{ApiError, AppState};
use sluice_store::complete::{CompleteError, JobStatus};
use sluice_store::persister::CompletionError;

use sluice_store::read::log_body;

/// Worker batches can be large; this bounds what one request may buffer.
const MAX_WORKER_BODY_BYTES: u64 = 16 * 1024 * 1024;

pub fn routes(
    state: AppState,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let st = state.clone();
    let complete = warp::path!("api" / "v1" / "sources" / String / "complete")
        .or(warp::path!("worker" / "jobs" / String / "complete"))
        .unify()
        .and(warp::post())
        .and(super::body(64 * 1024))
        .and_then(move |id: String, body: Result<Bytes, ApiError>| {
            let st = st.clone();
            async move {
                let done = match body {
                    Ok(body) => complete(&st, &id, &body).await,
                    Err(e) => Err(e),
                };
                Ok::<_, warp::Rejection>(done.unwrap_or_else(ApiError::into_response))
            }
        });
    let st = state.clone();
    let worker_logs = warp::path!("worker" / "jobs" / String / "logs")
        .and(warp::post())
        .and(super::large_body(MAX_WORKER_BODY_BYTES, &state))
        .and_then(move |id: String, body: Result<super::Body, ApiError>| {
            let st = st.clone();
            async move {
                let done = match body {
                    Ok(body) => worker_logs(&st, &id, &body).await,
                    Err(e) => Err(e),
                };
                Ok::<_, warp::Rejection>(done.unwrap_or_else(ApiError::into_response))
            }
        });
    let st = state.clone();
    let logs = warp::path!("api" / "jobs" / String / "logs")
        .and(warp::get())
        .and_then(move |id: String| {
            let st = st.clone();
            async move {
                Ok::<_, warp::Rejection>(
                    job_logs(&st, &id, None)
                        .await
                        .unwrap_or_else(ApiError::into_response),
                )
            }
        });
    let st = state.clone();
    let step_logs = warp::path!("api" / "jobs" / String / "steps" / String / "logs")
        .and(warp::get())
        .and_then(move |id: String, step: String| {
            let st = st.clone();
            async move {
                let step = super::decode_segment(&step).unwrap_or(step);
                Ok::<_, warp::Rejection>(
                    job_logs(&st, &id, Some(&step))
                        .await
                        .unwrap_or_else(ApiError::into_response),
                )
            }
        });
    let stream = warp::path!("api" / "jobs" / String / "logs" / "stream")
        .and(warp::get())
        .and(super::ws::upgrade())
        .map(move |id: String, ws: Upgrade| job_stream(state.clone(), &id, ws));
    complete
        .or(worker_logs)
        .unify()
        .or(stream)
        .unify()
        .or(logs)
        .unify()
        .or(step_logs)
        .unify()
}

fn job_id(raw: &str) -> Result<String, ApiError> {
    let id = super::decode_segment(raw)
        .ok_or_else(|| ApiError::bad_request("the job id is not valid UTF-8"))?;
    validate_source_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(id)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    status: JobStatus,
}

#[derive(Debug, Serialize)]
struct CompleteResponse {
    source_id: String,
    status: JobStatus,
    /// The job's local file, synced and closed (absent if it never logged).
    file: Option<String>,
    rotated: Vec<String>,
    /// Where the archive will be, when S3 is configured: the upload runs in the background.
    /// Absent when nothing was logged since the last completion (no empty objects).
    archive: Option<ArchiveTarget>,
}

#[derive(Debug, Serialize)]
struct ArchiveTarget {
    bucket: String,
    key: String,
}

async fn complete(state: &AppState, raw_id: &str, body: &[u8]) -> Result<Response, ApiError> {
    let id = job_id(raw_id)?;
    let req: CompleteRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid completion: {e} (send {{\"status\": \"completed\"}} or \"failed\")"
        ))
    })?;
    let done = sluice_store::complete::complete(
        &state.router,
        &state.persister,
        state.archive.as_ref(),
        &id,
        req.status,
    )
    .await
    .map_err(|e| {
        let status = match e {
            CompleteError::Unknown(_) => StatusCode::NOT_FOUND,
            CompleteError::Persister(CompletionError::Stopping) => StatusCode::SERVICE_UNAVAILABLE,
            CompleteError::Persister(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CompleteError::Record(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    })?;
    let path = |p: &std::path::Path| p.display().to_string();
    Ok(warp::reply::json(&CompleteResponse {
        source_id: id,
        status: req.status,
        file: done.file.as_deref().map(path),
        rotated: done.rotated.iter().map(|p| path(p)).collect(),
        archive: done
            .archive
            .map(|(bucket, key)| ArchiveTarget { bucket, key }),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
struct WorkerLogs {
    #[serde(default)]
    step_name: Option<String>,
    lines: Vec<WorkerLine>,
}

#[derive(Debug, Deserialize)]
struct WorkerLine {
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    line: String,
}

async fn worker_logs(state: &AppState, raw_id: &str, body: &[u8]) -> Result<Response, ApiError> {
    let id = job_id(raw_id)?;
    let req: WorkerLogs = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid worker logs: {e}")))?;
    let mut batch = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.into_iter().enumerate() {
        let mut env = Envelope::new(id.clone(), l.line);
        env.step = req
            .step_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(Into::into);
        env.channel = match l.stream.as_deref() {
            None | Some("stdout") => Channel::Out,
            Some("stderr") => Channel::Err,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "lines[{i}].stream: {other:?} is not stdout or stderr"
                )));
            }
        };
        if let Some(ts) = l.ts.filter(|t| !t.is_empty()) {
            let parsed = chrono::DateTime::parse_from_rfc3339(&ts).map_err(|e| {
                ApiError::bad_request(format!(
                    "lines[{i}].ts: {ts:?} is not an RFC 3339 time: {e}"
                ))
            })?;
            env.timestamp = parsed.timestamp_nanos_opt().unwrap_or(0);
        }
        batch.push(env);
    }
    let n = state
        .router
        .publish_waiting(batch, None)
        .await
        .map_err(|e| ApiError::envelope(e, StatusCode::UNPROCESSABLE_ENTITY))?;
    Ok(warp::reply::json(&serde_json::json!({ "accepted": n })).into_response())
}

async fn job_logs(
    state: &AppState,
    raw_id: &str,
    step: Option<&str>,
) -> Result<Response, ApiError> {
    let id = job_id(raw_id)?;
    let body = log_body(&state.router, state.stored(), &id, step)
        .await
        .map_err(|e| super::storage_error(&e, &format!("cannot read the logs of job {id:?}")))?
        .ok_or_else(|| ApiError::not_found(format!("no logs for job {id:?}")))?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(body);
    Ok(warp::reply::with_header(
        warp::reply::stream(stream),
        CONTENT_TYPE,
        "application/json",
    )
    .into_response())
}

/// Every line so far, then live. The cursor starts at the ring's beginning; what the ring no
/// longer holds (reported as missed) is read back from the job's files, so the stream has no gap
/// where Strøm's had one between backfill and subscribe.
fn job_stream(state: AppState, raw_id: &str, ws: Upgrade) -> Response {
    let id = match job_id(raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    // What the ring no longer holds (after a restart: all but the new lines) comes from the
    // job's files first.
    let (cursor, prelude) =
        match super::stream::open_source(&state, &id, Filter::default(), Start::AfterSeq(0)) {
            Ok(opened) => opened,
            Err(e) => return ApiError::envelope(e, StatusCode::BAD_REQUEST).into_response(),
        };
    ws.on_upgrade(move |socket| async move {
        let render = |batch: &mut Vec<Delivery>| {
            batch
                .drain(..)
                .map(|d| {
                    let env = d.into_entry("stream");
                    Message::text(Line::from_envelope(&env).to_json())
                })
                .collect()
        };
        // Lines the ring let go while this client was slow are on disk (or on their way):
        // read them back rather than announce them, so the stream has no gap.
        let stored = state.stored();
        let durability = state.router.durability().clone();
        let refill = move |m: &MissedNotice| {
            let after = m.last_missed_seq.saturating_sub(m.count);
            Some(stored.range(
                &id,
                after,
                m.last_missed_seq + 1,
                Filter::default(),
                durability.clone(),
                after + 1,
            ))
        };
        // Streamed from storage a batch at a time, never gathered: nothing to hold.
        super::stream::pump(socket, cursor, (prelude, None), state, render, refill).await;
    })
}
