//! The one error type of the front door and its mapping to HTTP. Database and unexpected
//! errors are logged with their cause and shown to the client only as a generic message.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401: missing or bad bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404: the thing asked for does not exist.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 413: the body is larger than any route accepts.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 429: too many requests from this caller; answered with `Retry-After` (whole seconds).
    #[error("too many requests, retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// 503: a dependency is not available yet.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the request took longer than the server allows.
    #[error("the request took too long")]
    Timeout,
    /// 500: logged in full, shown as a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Internal(e.into())
    }
}

impl Error {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(code, _) => (StatusCode::NOT_FOUND, code),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "request failed");
                "internal server error".to_string()
            }
            other => other.to_string(),
        };
        let mut response =
            (status, Json(json!({"error": code, "message": message}))).into_response();
        if let Self::TooManyRequests { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
