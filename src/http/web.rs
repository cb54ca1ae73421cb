//! The web page at `/`: plain HTML, CSS and JS from `web/`, compiled into the binary, so there
//! is nothing to build or install. Everything it shows comes from the public API; log text is
//! only ever set as text, and the page may load nothing but its own files (`Content-Security-Policy`).

use warp::Filter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::{Reply, Response};

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// Only this page's own files; its API calls and WebSockets go to this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| file(INDEX, "text/html; charset=utf-8"));
    let js = warp::path!("ui" / "app.js")
        .and(warp::get())
        .map(|| file(APP_JS, "text/javascript; charset=utf-8"));
    let css = warp::path!("ui" / "app.css")
        .and(warp::get())
        .map(|| file(APP_CSS, "text/css; charset=utf-8"));
    index.or(js).unify().or(css).unify()
}

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("a valid header"));
    // Small, and a new binary may change them: always revalidate.
    headers.insert(CACHE_CONTROL, "no-cache".parse().expect("a valid header"));
    headers.insert(
        "content-security-policy",
        CSP.parse().expect("a valid header"),
    );
    headers.insert(
        "x-content-type-options",
        "nosniff".parse().expect("a valid header"),
    );
    res
}
