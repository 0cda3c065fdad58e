//! Google's shapes on the wire, shared by every endpoint of the sandbox provider: the token
//! answer, OAuth error answers (`{"error", "error_description"}` with a status), and the
//! parsing of form bodies, HTTP Basic client credentials and bearer tokens.

use std::collections::HashMap;

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Serialize;

/// A successful `/token` answer, in Google's shape.
#[derive(Serialize)]
pub(super) struct TokenResponse {
    pub(super) access_token: String,
    pub(super) expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) refresh_token: Option<String>,
    pub(super) scope: String,
    pub(super) token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id_token: Option<String>,
    /// Whole seconds left of a time-limited grant; absent while access is ongoing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) refresh_token_expires_in: Option<u64>,
}

/// An OAuth error answer: `{"error": ..., "error_description": ...}` with a status.
#[derive(Debug)]
pub(super) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: Option<String>,
}

impl OAuthError {
    pub(super) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            description: Some(description.into()),
        }
    }

    pub(super) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(super) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    pub(super) fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        )
    }

    /// What an injected refresh failure answers.
    pub(super) fn internal_failure() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_failure",
            description: None,
        }
    }

    /// A bare `{"error": ...}` answer, as `/revoke` and `/v1/userinfo` give.
    pub(super) fn bare(status: StatusCode, error: &'static str) -> Self {
        Self {
            status,
            error,
            description: None,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.error });
        if let Some(description) = self.description {
            body["error_description"] = description.into();
        }
        (self.status, no_store(), Json(body)).into_response()
    }
}

/// Google's answers carry no-store so no cache keeps tokens.
pub(super) fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Parses `application/x-www-form-urlencoded` data; the first value of a name wins.
pub(super) fn parse_form(data: &[u8]) -> HashMap<String, String> {
    let mut form = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(data) {
        form.entry(name.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    form
}

/// The client id and secret of an `Authorization: Basic` header, each form-urlencoded as
/// RFC 6749 section 2.3.1 asks.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte).
fn form_decode(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
