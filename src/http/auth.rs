//! Who may call what over HTTP: one table from method and path to the scope it needs
//! ([`rule`]), checked by [`guard`] before any route runs. Endpoints whose answer depends on the
//! body (ingest: each envelope's source; drains: the source and the target) take the caller
//! with [`caller`] and check the rest themselves.
//!
//! The token comes from `Authorization: Bearer TOKEN`, else a WebSocket subprotocol
//! `bearer.TOKEN` (browsers cannot set headers on a WebSocket), else `?token=TOKEN`.

use std::collections::HashMap;

use warp::Filter;
use warp::http::header::{AUTHORIZATION, HeaderMap, SEC_WEBSOCKET_PROTOCOL};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::AppState;
use crate::auth::{Caller, Denied, Scope};

/// The subprotocol prefix that carries a token on a WebSocket handshake.
pub const WS_PROTOCOL_PREFIX: &str = "bearer.";

/// A refusal, answered 401 or 403 with the reason.
#[derive(Debug)]
pub struct Refused(pub Denied);

impl warp::reject::Reject for Refused {}

impl Refused {
    pub fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            Denied::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
            Denied::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        };
        let mut res = super::ApiError { status, message }.into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        res
    }
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Anyone (health checks; unknown paths, which are 404).
    Open,
    Operator,
    Read(String),
    Ingest(Option<String>),
    /// The handler decides (drains).
    Handler,
}

/// The scope each endpoint needs, from its method and path (raw, percent-encoded segments).
pub fn rule(method: &Method, path: &str) -> Rule {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let decode = |parts: &[&str]| super::decode_segment(&parts.join("/")).unwrap_or_default();
    match segments.as_slice() {
        ["healthz"] | ["readyz"] => Rule::Open,
        ["metrics"] => Rule::Operator,
        ["api", "v1", "sources"] => Rule::Operator,
        ["api", "v1", "sources", id @ .., "complete"] if !id.is_empty() => Rule::Operator,
        [
            "api",
            "v1",
            "sources",
            id @ ..,
            "recent" | "stream" | "stats",
        ] if !id.is_empty() => Rule::Read(decode(id)),
        ["api", "v1", "firehose"] => Rule::Operator,
        ["api", "v1", "drains", ..] => Rule::Handler,
        ["api", "v1", "ingest"] => Rule::Ingest(None),
        ["worker", "jobs", id, "logs"] if method == Method::POST => {
            Rule::Ingest(Some(decode(&[id])))
        }
        ["worker", "jobs", _, "complete"] => Rule::Operator,
        ["api", "jobs", id, ..] => Rule::Read(decode(&[id])),
        _ => Rule::Open,
    }
}

/// The token a request presents, if any.
fn presented(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(token.trim().to_owned());
        }
    }
    let offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_PROTOCOL_PREFIX).map(str::to_owned));
    offered.or_else(|| query.get("token").cloned())
}

/// The caller of a request (a refusal for a token the server does not know).
pub fn caller(
    state: AppState,
) -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and_then(move |headers: HeaderMap, query: HashMap<String, String>| {
            let state = state.clone();
            async move {
                state
                    .auth
                    .caller(presented(&headers, &query).as_deref())
                    .map_err(|d| warp::reject::custom(Refused(d)))
            }
        })
}

/// Refuses, before any route, a request whose caller the [`rule`] for its path does not allow.
pub fn guard(state: AppState) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(caller(state))
        .and_then(
            move |method: Method, path: warp::path::FullPath, caller: Caller| async move {
                let allowed = match rule(&method, path.as_str()) {
                    Rule::Open | Rule::Handler => Ok(()),
                    Rule::Operator => caller.allow(Scope::Operator, None),
                    Rule::Read(source) => caller.allow(Scope::Read, Some(&source)),
                    Rule::Ingest(source) => caller.allow(Scope::Ingest, source.as_deref()),
                };
                allowed.map_err(|d| warp::reject::custom(Refused(d)))
            },
        )
        .untuple_one()
}

/// A refusal as a response, for handlers that check the caller themselves.
pub fn refused(d: Denied) -> Response {
    Refused(d).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_its_rule() {
        let get = Method::GET;
        let post = Method::POST;
        for (method, path, want) in [
            (&get, "/healthz", Rule::Open),
            (&get, "/readyz", Rule::Open),
            (&get, "/metrics", Rule::Operator),
            (&get, "/api/v1/sources", Rule::Operator),
            (&get, "/api/v1/sources/app/recent", Rule::Read("app".into())),
            (
                &get,
                "/api/v1/sources/cf/doppler/stream",
                Rule::Read("cf/doppler".into()),
            ),
            (
                &get,
                "/api/v1/sources/cf%2Fdoppler/stats",
                Rule::Read("cf/doppler".into()),
            ),
            (&post, "/api/v1/sources/job/complete", Rule::Operator),
            (&get, "/api/v1/firehose", Rule::Operator),
            (&post, "/api/v1/drains", Rule::Handler),
            (&Method::DELETE, "/api/v1/drains/d1", Rule::Handler),
            (&post, "/api/v1/ingest", Rule::Ingest(None)),
            (
                &post,
                "/worker/jobs/j%201/logs",
                Rule::Ingest(Some("j 1".into())),
            ),
            (&post, "/worker/jobs/j/complete", Rule::Operator),
            (&get, "/api/jobs/j/logs", Rule::Read("j".into())),
            (&get, "/api/jobs/j/steps/build/logs", Rule::Read("j".into())),
            (&get, "/api/jobs/j/logs/stream", Rule::Read("j".into())),
            (&get, "/nothing/here", Rule::Open),
        ] {
            assert_eq!(rule(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn tokens_come_from_the_header_the_subprotocol_or_the_query() {
        let mut h = HeaderMap::new();
        let q = HashMap::from([("token".to_owned(), "from-query".to_owned())]);
        assert_eq!(presented(&h, &q).as_deref(), Some("from-query"));
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            "chat, bearer.from-ws".parse().unwrap(),
        );
        assert_eq!(presented(&h, &q).as_deref(), Some("from-ws"));
        h.insert(AUTHORIZATION, "bearer  from-header ".parse().unwrap());
        assert_eq!(presented(&h, &q).as_deref(), Some("from-header"));
    }
}
