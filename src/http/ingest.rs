//! `POST /api/v1/ingest` (SPEC §2.3): envelopes over HTTP, for producers that cannot hold a
//! native connection.
//!
//! The body is NDJSON (one envelope object per line; `application/x-ndjson`, or any type but
//! the two below), a JSON array of envelope objects (`application/json` whose body starts with
//! `[`), or a MessagePack envelope or batch (`application/msgpack`), as a native frame carries
//! it. An envelope object has the field names tails show (`source_id` required; `message`,
//! `timestamp` in ns, `origin`, `instance_id`, `channel`, `step`, `tags`; a `seq` is ignored:
//! the router assigns seqs). The whole request is accepted or refused: nothing of a refused one
//! is published.
//!
//! `?ack=count` (the default) answers `{"accepted": N}` once the rings have the batch;
//! `?ack=durable` once the persister has it on disk, as native ingest's `ack=durable` does
//! (503 if it was lost on the way, 504 past `ingest.durable_timeout_secs`: send it again).
//! A body over `ingest.max_frame_bytes` or a batch over `ingest.max_batch_envelopes` is 413; a
//! line that is not an envelope is 400 naming the line and the field.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_router::codec::{self, Payload};
use sluice_router::{Channel, Envelope};
use warp::Filter as _;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{ApiError, AppState};
use crate::auth::{Caller, Scope};

/// One envelope as JSON: the names a tail shows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEnvelope {
    source_id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    channel: Option<Channel>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// What a tail shows; accepted so that its output can be sent again, and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    seq: Option<u64>,
}

impl From<JsonEnvelope> for Envelope {
    fn from(j: JsonEnvelope) -> Envelope {
        let mut e = Envelope::new(j.source_id, j.message);
        e.timestamp = j.timestamp;
        if let Some(origin) = j.origin {
            e.origin = origin.into();
        }
        if let Some(instance) = j.instance_id {
            e.instance_id = instance.into();
        }
        if let Some(channel) = j.channel {
            e.channel = channel;
        }
        e.step = j.step.filter(|s| !s.is_empty()).map(Into::into);
        e.tags = j.tags;
        e
    }
}

pub fn routes(
    state: AppState,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let max = state.config.ingest.max_frame_bytes as u64;
    warp::path!("api" / "v1" / "ingest")
        .and(warp::post())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("content-type"))
        .and(super::auth::caller(state.clone()))
        .and(super::large_body(max, &state))
        .and_then(
            move |query: HashMap<String, String>,
                  kind: Option<String>,
                  caller: Caller,
                  body: Result<super::Body, ApiError>| {
                let st = state.clone();
                async move {
                    let done = match body {
                        Ok(body) => ingest(&st, &caller, &query, kind.as_deref(), &body).await,
                        Err(e) => Err(e),
                    };
                    Ok::<_, warp::Rejection>(done.unwrap_or_else(ApiError::into_response))
                }
            },
        )
}

async fn ingest(
    state: &AppState,
    caller: &Caller,
    query: &HashMap<String, String>,
    kind: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    if let Some(key) = query.keys().find(|k| *k != "ack" && *k != "token") {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {key:?}: this endpoint takes ack"
        )));
    }
    let durable = match query.get("ack").map(String::as_str) {
        None | Some("count") => false,
        Some("durable") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "ack={other}: the server understands ack=count and ack=durable"
            )));
        }
    };
    let max_batch = state.config.ingest.max_batch_envelopes;
    let batch = decode(kind, body, max_batch).inspect_err(|e| {
        let reason = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            "batch_too_large"
        } else {
            "invalid"
        };
        state.metrics.ingest_refused(reason, 1);
    })?;
    if batch.len() > max_batch {
        state
            .metrics
            .ingest_refused("batch_too_large", batch.len() as u64);
        return Err(too_many(batch.len(), max_batch));
    }
    for (i, e) in batch.iter().enumerate() {
        if let Err(denied) = caller.allow(Scope::Ingest, Some(&e.source_id)) {
            state
                .metrics
                .ingest_refused("forbidden", batch.len() as u64);
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message: format!("envelope {i}: {denied}"),
            });
        }
        if let Err(err) = e.validate() {
            state
                .metrics
                .ingest_refused(err.reason(), batch.len() as u64);
            return Err(ApiError::bad_request(format!("envelope {i}: {err}")));
        }
    }
    let n = batch.len() as u64;
    let mut ranges: Vec<(Arc<str>, u64, u64)> = Vec::new();
    state
        .router
        .publish_waiting(batch, durable.then_some(&mut ranges))
        .await
        .map_err(|e| {
            state.metrics.ingest_refused(e.reason(), n);
            ApiError::envelope(e, StatusCode::BAD_REQUEST)
        })?;
    state.metrics.http_ingest_envelopes.inc_by(n);
    if durable {
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(state.config.ingest.durable_timeout_secs);
        let durability = state.router.durability();
        for (source, first, last) in ranges {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = durability.wait(&source, first, last, left).await {
                let status = match e {
                    sluice_router::durable::DurableError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                return Err(ApiError {
                    status,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(warp::reply::json(&serde_json::json!({ "accepted": n })).into_response())
}

fn too_many(n: usize, max: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "a batch of {n} envelopes is over the limit of {max} (ingest.max_batch_envelopes): send smaller batches"
        ),
    }
}

/// The envelopes of a body, by its content type.
pub fn decode(
    kind: Option<&str>,
    body: &[u8],
    max_batch: usize,
) -> Result<Vec<Envelope>, ApiError> {
    let essence = kind
        .and_then(|k| k.split(';').next())
        .map(|k| k.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let batch = decode_any(&essence, body, max_batch)?;
    if batch.is_empty() {
        // (Found by the http_ingest fuzz target: `[]` was accepted as a batch of nothing.)
        return Err(ApiError::bad_request(
            "no envelopes: send one JSON object per line, a JSON array, or MessagePack",
        ));
    }
    Ok(batch)
}

fn decode_any(essence: &str, body: &[u8], max_batch: usize) -> Result<Vec<Envelope>, ApiError> {
    if matches!(
        essence,
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack"
    ) {
        return match codec::decode_payload(body) {
            Ok(Payload::Envelopes(batch)) => Ok(batch),
            Ok(Payload::Control(_)) => Err(ApiError::bad_request(
                "a MessagePack string is a native control word, not an envelope",
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid MessagePack body: {e}"
            ))),
        };
    }
    let text = body.trim_ascii_start();
    if essence == "application/json" && text.first() == Some(&b'[') {
        let all: Vec<JsonEnvelope> = serde_json::from_slice(text)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON array of envelopes: {e}")))?;
        if all.len() > max_batch {
            return Err(too_many(all.len(), max_batch));
        }
        return Ok(all.into_iter().map(Envelope::from).collect());
    }
    let mut batch = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if batch.len() == max_batch {
            return Err(too_many(max_batch + 1, max_batch));
        }
        let e: JsonEnvelope = serde_json::from_slice(line)
            .map_err(|e| ApiError::bad_request(format!("line {}: {e}", i + 1)))?;
        batch.push(e.into());
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_content_type() {
        let nd = b"{\"source_id\":\"a\",\"message\":\"x\"}\n\n{\"source_id\":\"b\",\"channel\":\"stderr\",\"seq\":9}\n";
        let batch = decode(Some("application/x-ndjson"), nd, 10).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(
            (batch[1].source_id.as_str(), batch[1].channel),
            ("b", Channel::Err)
        );
        let arr = br#" [{"source_id":"a","tags":{"k":"v"},"timestamp":5}]"#;
        let batch = decode(Some("application/json; charset=utf-8"), arr, 10).unwrap();
        assert_eq!((batch[0].timestamp, batch[0].tags["k"].as_str()), (5, "v"));
        let e = decode(None, b"{\"source_id\":\"a\"}\n{\"sourceid\":\"a\"}", 10).unwrap_err();
        assert!(
            e.message.starts_with("line 2: unknown field `sourceid`"),
            "{}",
            e.message
        );
        let e = decode(None, b"{\"source_id\":\"a\"}\n{\"source_id\":\"a\"}", 1).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            decode(None, b"\n \n", 1).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let mut packed = bytes::BytesMut::new();
        codec::encode_batch(&[Envelope::new("m", "packed")], &mut packed);
        let batch = decode(Some("application/msgpack"), &packed, 10).unwrap();
        assert_eq!(&batch[0].message[..], b"packed");
    }

    /// An empty array (JSON or MessagePack) is no batch at all, as an empty NDJSON body is not.
    #[test]
    fn empty_batches_are_refused_whatever_their_type() {
        for (kind, body) in [
            ("application/json", &b"[]"[..]),
            ("application/msgpack", b"\x90"),
            ("application/x-ndjson", b""),
        ] {
            let e = decode(Some(kind), body, 1).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{kind}");
            assert!(
                e.message.starts_with("no envelopes"),
                "{kind}: {}",
                e.message
            );
        }
    }
}
