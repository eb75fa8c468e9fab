//! Bearer-token checks: every mutating endpoint needs the configured token (and is off without
//! one); read endpoints need it when `protect_reads` is set.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, State as AdminState};

/// Lets the request through with the right token; 401 without it, 403 when no token is
/// configured.
pub(crate) async fn require_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    match check(state.config.token.as_deref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), status = %error.status(), "admin request refused");
            error.into_response()
        }
    }
}

/// Reads of user data (dead-letter payloads and metadata): the token is needed whenever one is
/// configured, whether or not other reads are protected; open only on a server with no token.
pub(crate) async fn require_token_if_set(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    if state.config.token.is_none() {
        return next.run(request).await;
    }
    require_token(State(state), request, next).await
}

/// Like [`require_token`] when reads are protected; lets every read through otherwise.
pub(crate) async fn require_read(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.config.protect_reads {
        return next.run(request).await;
    }
    require_token(State(state), request, next).await
}

fn check(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "mutating endpoints are disabled: no admin token is configured",
        )
        .with_field("admin.token"));
    };
    let unauthorized = |message: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, message).with_field("authorization")
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing `Authorization: Bearer <token>` header",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not visible ASCII"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("the Authorization scheme must be Bearer"));
    }
    if !constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
        return Err(unauthorized("invalid token"));
    }
    Ok(())
}

/// Compares without stopping at the first difference (only the length leaks).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn tokens_are_checked() {
        let token = "0123456789abcdef";
        assert!(check(Some(token), &headers("Bearer 0123456789abcdef")).is_ok());
        assert!(check(Some(token), &headers("bearer 0123456789abcdef")).is_ok());
        let e = check(Some(token), &headers("Bearer 0123456789abcdeX")).expect_err("wrong");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let e = check(Some(token), &headers("Basic 0123456789abcdef")).expect_err("scheme");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let e = check(Some(token), &HeaderMap::new()).expect_err("missing");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let e = check(None, &headers("Bearer 0123456789abcdef")).expect_err("off");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
    }
}
