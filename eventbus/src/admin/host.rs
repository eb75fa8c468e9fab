//! Guards against DNS rebinding while reads are open: a page on another site can point a name
//! of its own at this server's address and read the API from the victim's browser. Such a
//! request carries that foreign name in `Host`. While reads need no token, only requests
//! addressed by an IP literal, `localhost`, or a name configured with
//! [`AdminConfig::allow_host`](super::AdminConfig::allow_host) are served; others get
//! `421 Misdirected Request`.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, State as AdminState};

/// The host part of a `Host` header value, without its port (`[::1]:80` gives `::1`).
fn host_part(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => value,
    }
}

/// Whether a request addressed to `host` may be served while reads are open.
pub(crate) fn allowed(host: &str, names: &[String]) -> bool {
    let host = host_part(host.trim()).trim_end_matches('.');
    host.parse::<std::net::IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(host))
}

/// Refuses requests for a foreign host name while reads are open (see the module docs).
pub(crate) async fn check_host(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    if state.config.protect_reads {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    match host {
        Some(host) if !allowed(&host, &state.config.allowed_hosts) => {
            tracing::warn!(%host, path = %request.uri().path(), "admin request for a foreign host refused");
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "`{host}` is not a name of this server; add it with `AdminConfig::allow_host`"
                ),
            )
            .with_field("host")
            .into_response()
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_allowed_only_when_configured() {
        let names = vec!["events.internal".to_owned()];
        for ok in [
            "127.0.0.1:9090",
            "[::1]:9090",
            "10.1.2.3",
            "localhost:9090",
            "LOCALHOST",
            "events.internal:9090",
            "events.internal.",
        ] {
            assert!(allowed(ok, &names), "{ok}");
        }
        for refused in [
            "attacker.example:9090",
            "evil.localhost.example",
            "events.internal.evil",
            "",
        ] {
            assert!(!allowed(refused, &names), "{refused}");
        }
    }
}
