//! The dashboard: one self-contained HTML page (no external resources) that polls the admin
//! API: throughput per topic, dead letters with inspect / retry / delete, consumer-group lag,
//! circuit breakers.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, embedded at compile time.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

/// Nothing but this origin; inline script and style are the page's own (it renders data with
/// `textContent` only, never as HTML).
const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `GET /` and `GET /dashboard`.
pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
