//! The WebSocket upgrade for every streaming endpoint, done here rather than by `warp::ws` so
//! that the socket's buffers can be sized for many idle tails.
//!
//! tungstenite's default read buffer is 128 KiB per connection, zero-filled on the first read,
//! and warp offers no way to change it: 10,000 tails would hold 1.3 GiB before a single line is
//! sent. Tail clients only ever send control frames, so 1 KiB is plenty (it grows for
//! a larger frame). Measured (BENCHMARKS.md, "Profiles"): 10,000 idle tails took 1.36 GiB with
//! `warp::ws`, 83 MiB with this upgrade.

use std::future::Future;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

pub use tokio_tungstenite::tungstenite::{Error, Message};

/// A server-side WebSocket over an upgraded HTTP connection.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Largest message accepted from a client (they only send control frames).
const MAX_INCOMING_MESSAGE_BYTES: usize = 64 * 1024;

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        // Frames queue up to this much before a write; each batch ends with a flush anyway.
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(MAX_INCOMING_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_INCOMING_MESSAGE_BYTES))
}

/// A request that asked for a WebSocket, not yet answered.
#[derive(Debug)]
pub struct Upgrade {
    key: String,
    on_upgrade: Option<OnUpgrade>,
    /// The `bearer.TOKEN` subprotocol a browser offered its token in: a client that offers
    /// subprotocols must get one of them back.
    protocol: Option<String>,
    /// The connection's send timeout, stopped once it is a WebSocket: a tail that reads slowly
    /// is overwritten, not cut off.
    clock: Option<super::serve::SendClock>,
}

/// Why a streaming endpoint refused a plain HTTP request.
#[derive(Debug)]
pub struct NotAWebSocket(&'static str);

impl warp::reject::Reject for NotAWebSocket {}

impl std::fmt::Display for NotAWebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: this endpoint is a WebSocket", self.0)
    }
}

/// Matches a WebSocket handshake (RFC 6455 §4.2.1); anything else is rejected with
/// [`NotAWebSocket`].
pub fn upgrade() -> impl Filter<Extract = (Upgrade,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<super::serve::SendClock>())
        .and_then(
            |headers: warp::http::HeaderMap,
             on_upgrade: Option<OnUpgrade>,
             clock: Option<super::serve::SendClock>| async move {
                let has = |name: header::HeaderName, token: &str| {
                    headers.get_all(name).iter().any(|v| {
                        v.to_str().is_ok_and(|v| {
                            v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                        })
                    })
                };
                let reject = |why| Err(warp::reject::custom(NotAWebSocket(why)));
                if !has(header::CONNECTION, "upgrade") {
                    return reject("missing header `connection: upgrade`");
                }
                if !has(header::UPGRADE, "websocket") {
                    return reject("missing header `upgrade: websocket`");
                }
                if !has(header::SEC_WEBSOCKET_VERSION, "13") {
                    return reject("missing header `sec-websocket-version: 13`");
                }
                let Some(key) = headers
                    .get(header::SEC_WEBSOCKET_KEY)
                    .and_then(|k| k.to_str().ok())
                else {
                    return reject("missing header `sec-websocket-key`");
                };
                let protocol = headers
                    .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(str::trim)
                    .find(|p| p.starts_with(super::auth::WS_PROTOCOL_PREFIX))
                    .map(str::to_owned);
                Ok(Upgrade {
                    key: key.to_owned(),
                    on_upgrade,
                    protocol,
                    clock,
                })
            },
        )
}

impl Upgrade {
    /// The connection's send timeout, which the upgrade stops (see [`super::serve::SendClock`]).
    pub fn clock(&self) -> Option<super::serve::SendClock> {
        self.clock.clone()
    }

    /// Answers `101 Switching Protocols` and runs `serve` on the socket once the client has it.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(on_upgrade) = self.on_upgrade else {
            return warp::reply::with_status(
                "this connection cannot be upgraded",
                StatusCode::BAD_REQUEST,
            )
            .into_response();
        };
        let clock = self.clock;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    if let Some(clock) = clock {
                        clock.stop();
                    }
                    let io = TokioIo::new(upgraded);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
                    serve(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut res = warp::reply().into_response();
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(v) = self.protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
        res
    }
}
