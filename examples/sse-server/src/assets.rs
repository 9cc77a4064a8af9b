//! The static files `sse-server` serves besides the demo page, all compiled into the binary:
//! the browser helper, the htmx example page and the htmx files it loads.
//!
//! ```text
//! GET /resumable-sse.js                     the browser helper (clients/browser/resumable-sse.js)
//! GET /htmx                                 htmx example page (htmx + its SSE extension)
//! GET /vendor/htmx-2.0.11.min.js            htmx.org 2.0.11, 0BSD (static/vendor/)
//! GET /vendor/htmx-ext-sse-2.2.4.min.js     htmx-ext-sse 2.2.4, 0BSD
//! ```

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

const HELPER: &str = include_str!("../../../clients/browser/resumable-sse.js");
const HTMX_PAGE: &str = include_str!("../static/htmx.html");
const HTMX: &str = include_str!("../static/vendor/htmx-2.0.11.min.js");
const HTMX_SSE: &str = include_str!("../static/vendor/htmx-ext-sse-2.2.4.min.js");

/// A JavaScript file; `no-cache` so a browser revalidates it after the server is upgraded.
fn script(body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The routes above; they need no session, so they sit outside the SSE layer.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/resumable-sse.js", get(|| async { script(HELPER) }))
        .route("/htmx", get(|| async { Html(HTMX_PAGE) }))
        .route("/vendor/htmx-2.0.11.min.js", get(|| async { script(HTMX) }))
        .route(
            "/vendor/htmx-ext-sse-2.2.4.min.js",
            get(|| async { script(HTMX_SSE) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use resumable_sse_axum::testing::TestServer;

    #[tokio::test]
    async fn serves_the_helper_and_the_htmx_example() {
        let server = TestServer::start_fast(router()).await;
        for (path, content_type, contains) in [
            (
                "/resumable-sse.js",
                "text/javascript; charset=utf-8",
                "export class ResumableEventSource",
            ),
            ("/htmx", "text/html; charset=utf-8", "sse-connect="),
            (
                "/vendor/htmx-2.0.11.min.js",
                "text/javascript; charset=utf-8",
                "htmx",
            ),
            (
                "/vendor/htmx-ext-sse-2.2.4.min.js",
                "text/javascript; charset=utf-8",
                "defineExtension(\"sse\"",
            ),
        ] {
            let response = reqwest::get(server.url(path)).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(
                response.headers()["content-type"],
                content_type,
                "{path}: content type"
            );
            assert!(
                response.text().await.unwrap().contains(contains),
                "{path} should contain {contains}"
            );
        }
    }
}
