//! The microservice's HTTP client: POST a user's tokens or DELETE them, judge the answer, and
//! log with the seed's messages and fields, word for word, so existing runbooks keep working.
//! Every call carries the user's `Token-Version` (and, when configured, Standard Webhooks
//! signatures), so a microservice can refuse a push older than what it holds; its `409` means
//! a newer change got there first, which is as good as delivered.
//! HTTP only: it must not touch the store or the metrics (the delivery step in `delivery` reads
//! the state to send and records how the call went).

use std::sync::Arc;

use chrono::SecondsFormat;
use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::signing::{Binding, Signer};
use crate::{
    config::{BaseUrl, MicroserviceConfig},
    google::describe_reqwest_error,
    ids::TokenVersion,
    store::StoredTokens,
};

/// The body of `POST /api/users/{user_id}/google-calendar/connect`: exactly the seed's four
/// fields (docs/microservice.md: The microservice contract), and when pushes are signed the [`Binding`] too.
#[derive(Serialize)]
struct ConnectBody<'a> {
    access_token: &'a str,
    refresh_token: &'a str,
    token_expiry: String,
    scope: &'a str,
    #[serde(flatten)]
    binding: Option<Binding<'a>>,
}

/// The header carrying the user's change counter on every push.
pub const TOKEN_VERSION: &str = "Token-Version";

/// How a single call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// `409`: the microservice already holds this version or a newer one.
    Superseded,
    Skipped,
    /// `error` and `details` as the seed logs them.
    Failed {
        error: String,
        details: String,
    },
}

/// HTTP client of the microservice.
#[derive(Clone)]
pub struct MicroserviceClient {
    http: reqwest::Client,
    base_url: Option<BaseUrl>,
    /// `base_url` without userinfo: the `microserviceUrl` of the log lines, which must not
    /// carry a password written into the URL.
    shown_url: Option<String>,
    token: Option<SecretString>,
    signer: Option<Arc<Signer>>,
}

impl MicroserviceClient {
    pub fn new(config: &MicroserviceConfig) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base_url: config.url.clone(),
            shown_url: config.url.as_ref().map(BaseUrl::shown),
            token: config.token.clone(),
            signer: config.signer.clone(),
        })
    }

    fn shown_url(&self) -> &str {
        self.shown_url.as_deref().unwrap_or_default()
    }

    fn endpoint(&self, base: &BaseUrl, segments: &[&str]) -> String {
        let mut url = base.as_str().to_string();
        for segment in segments {
            url.push('/');
            url.push_str(&urlencode(segment));
        }
        url
    }

    /// The user and version a signed body carries; `None` when pushes are not signed, so the
    /// bodies stay exactly the seed's.
    fn binding<'a>(&self, user_id: &'a str, version: TokenVersion) -> Option<Binding<'a>> {
        self.signer.as_ref().map(|_| Binding {
            user_id,
            token_version: version,
        })
    }

    /// Adds what every call carries besides its body: the trace, the bearer token, the
    /// version and the signatures over `body` (empty for an unsigned DELETE).
    fn prepared(
        &self,
        request: reqwest::RequestBuilder,
        user_id: &str,
        version: TokenVersion,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let mut request = request
            .headers(trace_headers())
            .header(TOKEN_VERSION, version.to_string());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(signer) = &self.signer {
            let now = chrono::Utc::now().timestamp();
            request = request.headers(signer.headers(user_id, version, now, body));
        }
        request
    }

    /// POSTs the tokens of the user's change `version`.
    pub async fn push(
        &self,
        user_id: &str,
        version: TokenVersion,
        tokens: &StoredTokens,
    ) -> Delivery {
        let Some(base) = &self.base_url else {
            tracing::warn!(
                userId = %user_id,
                "⚠️ GOOGLE_CALENDAR_MICROSERVICE_URL not configured, skipping token sync"
            );
            return Delivery::Skipped;
        };
        tracing::info!(
            userId = %user_id,
            microserviceUrl = %self.shown_url(),
            "🔄 Syncing Google Calendar tokens to microservice"
        );
        let token_expiry = tokens
            .token_expiry
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        let body = ConnectBody {
            access_token: tokens.access_token.expose_secret(),
            refresh_token: tokens.refresh_token.expose_secret(),
            token_expiry: token_expiry.clone(),
            scope: &tokens.scope,
            binding: self.binding(user_id, version),
        };
        let url = self.endpoint(
            base,
            &["api", "users", user_id, "google-calendar", "connect"],
        );
        // Serialized once: the signature covers exactly the bytes sent.
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(e) => {
                return Delivery::Failed {
                    error: format!("cannot encode the body: {e}"),
                    details: "{ status: undefined, statusText: undefined }".into(),
                };
            }
        };
        let request = self.prepared(self.http.post(url), user_id, version, &body);
        let result = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match judge(result, false) {
            Delivery::Delivered => {
                tracing::info!(
                    userId = %user_id,
                    tokenExpiry = %token_expiry,
                    "✅ Tokens synced to microservice successfully"
                );
                Delivery::Delivered
            }
            Delivery::Superseded => {
                tracing::info!(
                    userId = %user_id,
                    tokenVersion = version.get(),
                    "microservice already holds a newer change; nothing to sync"
                );
                Delivery::Superseded
            }
            failed => {
                if let Delivery::Failed { error, details } = &failed {
                    tracing::error!(
                        userId = %user_id,
                        microserviceUrl = %self.shown_url(),
                        error = %error,
                        details = %details,
                        "❌ Failed to sync tokens to microservice"
                    );
                }
                failed
            }
        }
    }

    /// DELETEs the user's tokens at change `version`; a 404 means they are already gone,
    /// which is what we want.
    pub async fn delete(&self, user_id: &str, version: TokenVersion) -> Delivery {
        let Some(base) = &self.base_url else {
            tracing::warn!(
                userId = %user_id,
                "⚠️ GOOGLE_CALENDAR_MICROSERVICE_URL not configured, skipping token sync"
            );
            return Delivery::Skipped;
        };
        tracing::info!(
            userId = %user_id,
            microserviceUrl = %self.shown_url(),
            "🔄 Deleting Google Calendar tokens from microservice"
        );
        let url = self.endpoint(base, &["api", "google-tokens", user_id]);
        // Unsigned, no body, as the seed sends it; signed, exactly the binding, so the
        // signature cannot be lifted onto another user's DELETE.
        let body = match self
            .binding(user_id, version)
            .map(|b| serde_json::to_vec(&b))
        {
            None => Vec::new(),
            Some(Ok(body)) => body,
            Some(Err(e)) => {
                return Delivery::Failed {
                    error: format!("cannot encode the body: {e}"),
                    details: "{ status: undefined, statusText: undefined }".into(),
                };
            }
        };
        let mut request = self.prepared(self.http.delete(url), user_id, version, &body);
        if !body.is_empty() {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        match judge(request.send().await, true) {
            Delivery::Delivered => {
                tracing::info!(userId = %user_id, "✅ Tokens deleted from microservice successfully");
                Delivery::Delivered
            }
            Delivery::Superseded => {
                tracing::info!(
                    userId = %user_id,
                    tokenVersion = version.get(),
                    "microservice already holds a newer change; nothing to delete"
                );
                Delivery::Superseded
            }
            failed => {
                if let Delivery::Failed { error, details } = &failed {
                    tracing::error!(
                        userId = %user_id,
                        microserviceUrl = %self.shown_url(),
                        error = %error,
                        details = %details,
                        "❌ Failed to delete tokens from microservice"
                    );
                }
                failed
            }
        }
    }
}

/// 2xx (and 404 for a delete) is delivered, 409 superseded; anything else is a failure
/// described the way the seed's logs describe it.
fn judge(result: Result<reqwest::Response, reqwest::Error>, not_found_ok: bool) -> Delivery {
    match result {
        Ok(response) => {
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            if status.is_success() || (not_found_ok && status == StatusCode::NOT_FOUND) {
                Delivery::Delivered
            } else if status == StatusCode::CONFLICT {
                Delivery::Superseded
            } else {
                Delivery::Failed {
                    error: format!("Request failed with status code {}", status.as_u16()),
                    details: format!(
                        "{{ status: {}, statusText: {} }}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("unknown")
                    ),
                }
            }
        }
        Err(e) => Delivery::Failed {
            error: describe_reqwest_error(&e),
            details: "{ status: undefined, statusText: undefined }".to_string(),
        },
    }
}

/// A `traceparent` for the current span.
fn trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    crate::telemetry::inject_context(&mut headers);
    headers
}

/// Percent-encodes a path segment (user ids are restricted, but never trust that here).
fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(binding: Option<Binding<'_>>) -> String {
        let body = ConnectBody {
            access_token: "a",
            refresh_token: "r",
            token_expiry: "2025-12-13T10:30:00Z".into(),
            scope: "s",
            binding,
        };
        String::from_utf8(serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn unsigned_bodies_are_the_seeds_and_signed_ones_name_user_and_version() {
        assert_eq!(
            body(None),
            r#"{"access_token":"a","refresh_token":"r","token_expiry":"2025-12-13T10:30:00Z","scope":"s"}"#
        );
        let binding = Binding {
            user_id: "alice",
            token_version: TokenVersion::new(7),
        };
        assert_eq!(
            body(Some(binding)),
            r#"{"access_token":"a","refresh_token":"r","token_expiry":"2025-12-13T10:30:00Z","scope":"s","user_id":"alice","token_version":7}"#
        );
        assert_eq!(
            serde_json::to_string(&binding).unwrap(),
            r#"{"user_id":"alice","token_version":7}"#
        );
    }
}
