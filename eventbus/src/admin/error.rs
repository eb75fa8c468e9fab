//! The admin API's errors: JSON bodies `{ "error": "...", "field": "..." }` with an HTTP
//! status that says whose fault it was.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::Error;

/// An error answered by the admin API.
///
/// The body is `{"error": message, "field": name}`; `field` names the parameter, body field
/// or setting at fault and is omitted when no single one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 400: `field` (a query parameter or body field) is invalid.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).with_field(field)
    }

    /// 404: nothing at this address.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Names the parameter, field or setting at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match &error {
            Error::Config { setting, .. }
            | Error::Pattern {
                subscriber: setting,
                ..
            } => {
                let field = setting.clone();
                Self::new(StatusCode::BAD_REQUEST, error.to_string()).with_field(field)
            }
            Error::DeadLetterNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, error.to_string()).with_field("id")
            }
            Error::Unsupported { .. } => Self::new(StatusCode::NOT_IMPLEMENTED, error.to_string()),
            Error::Backend { .. } | Error::Inbox { .. } => {
                tracing::warn!(error = %crate::error::chain(&error), "admin request failed in the backend");
                Self::new(StatusCode::BAD_GATEWAY, crate::error::chain(&error))
            }
            Error::Timeout { .. } => Self::new(StatusCode::GATEWAY_TIMEOUT, error.to_string()),
            Error::CircuitOpen { .. } | Error::Closed => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            _ => {
                tracing::warn!(error = %crate::error::chain(&error), "admin request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    crate::error::chain(&error),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self.message,
            field: self.field.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"eventbus-admin\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_errors_map_to_statuses_and_fields() {
        let e = ApiError::from(Error::config("type", "bad pattern"));
        assert_eq!(
            (e.status(), e.field()),
            (StatusCode::BAD_REQUEST, Some("type"))
        );
        let e = ApiError::from(Error::DeadLetterNotFound {
            topic: "t.dlq".into(),
            id: "9".into(),
        });
        assert_eq!((e.status(), e.field()), (StatusCode::NOT_FOUND, Some("id")));
        let e = ApiError::from(Error::Unsupported {
            backend: "memory",
            operation: "x",
        });
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        let e = ApiError::from(Error::backend("redis", "XADD", "connection refused"));
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
