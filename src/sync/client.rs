//! One delivery to the microservice: take the user's state (carried by the change, or read
//! from the row), POST it (or DELETE when the user is disconnected), record the outcome in the
//! database, and log with the seed's messages and fields, word for word, so existing runbooks
//! keep working.

use chrono::SecondsFormat;
use opentelemetry::Context;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    config::{MicroserviceConfig, without_userinfo},
    google::describe_reqwest_error,
    metrics::Metrics,
    store::{Store, StoredTokens, SyncSnapshot},
};

/// The body of `POST /api/users/{user_id}/google-calendar/connect`, exactly as SEED.md shows.
#[derive(Serialize)]
struct ConnectBody<'a> {
    access_token: &'a str,
    refresh_token: &'a str,
    token_expiry: String,
    scope: &'a str,
}

/// One call to make for one user.
pub struct Call {
    pub user_id: String,
    /// The state to send, when the change that asked for the call carried it.
    pub known: Option<SyncSnapshot>,
    pub cx: Context,
    pub attempt: u32,
}

/// How a single call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
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
    base_url: Option<String>,
    /// `base_url` without userinfo: the `microserviceUrl` of the log lines, which must not
    /// carry a password written into the URL.
    shown_url: Option<String>,
    token: Option<SecretString>,
}

impl MicroserviceClient {
    pub fn new(config: &MicroserviceConfig) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base_url: config.url.clone(),
            shown_url: config.url.as_deref().map(without_userinfo),
            token: config.token.clone(),
        })
    }

    /// Brings the microservice up to the user's state: `call.known` when the change carried
    /// it, else the row as it is now. Answers whether nothing is left to do for the version
    /// sent, and that version. Only the HTTP call holds one of `permits` (which bound the
    /// calls to the microservice); reading and recording wait in the store's batches outside
    /// it. The call's span (`microservice.sync` or `microservice.delete`) joins `call.cx`, the
    /// trace of the change that caused it.
    pub async fn deliver(
        &self,
        store: &Store,
        metrics: &Metrics,
        permits: &Semaphore,
        call: Call,
    ) -> (bool, Option<i64>) {
        let Call {
            user_id,
            known,
            cx,
            attempt,
        } = call;
        let user_id = user_id.as_str();
        let snapshot = match known {
            Some(snapshot) => snapshot,
            None => match store.sync_snapshot(user_id).await {
                Ok(Some(snapshot)) => snapshot,
                Ok(None) => return (true, None),
                Err(e) => {
                    tracing::warn!(userId = %user_id, error = %e, "cannot read tokens to sync, will retry");
                    return (false, None);
                }
            },
        };
        let Ok(permit) = permits.acquire().await else {
            return (false, None);
        };
        let version = snapshot.version();
        let span = match &snapshot {
            SyncSnapshot::Connected { .. } => tracing::info_span!(
                "microservice.sync",
                otel.kind = "client",
                user.id = %user_id,
                sync.attempt = attempt,
                sync.version = version,
                http.response.status_code = tracing::field::Empty,
            ),
            SyncSnapshot::Disconnected { .. } => tracing::info_span!(
                "microservice.delete",
                otel.kind = "client",
                user.id = %user_id,
                sync.attempt = attempt,
                sync.version = version,
                http.response.status_code = tracing::field::Empty,
            ),
        };
        let _ = span.set_parent(cx);
        let (op, outcome) = match &snapshot {
            SyncSnapshot::Connected { tokens, .. } => {
                ("connect", self.push(user_id, tokens).instrument(span).await)
            }
            SyncSnapshot::Disconnected { .. } => {
                ("delete", self.delete(user_id).instrument(span).await)
            }
        };
        drop(permit);
        let recorded = match &outcome {
            Delivery::Delivered => {
                metrics.sync(op, "ok");
                store.mark_synced(user_id, version).await
            }
            Delivery::Skipped => {
                metrics.sync(op, "skipped");
                store.mark_sync_skipped(user_id, version).await
            }
            Delivery::Failed { error, .. } => {
                metrics.sync(op, "failed");
                store.mark_sync_failed(user_id, version, error).await
            }
        };
        if let Err(e) = &recorded {
            // The outcome is lost, so the call is repeated later; the microservice's
            // upsert and delete are idempotent.
            tracing::warn!(userId = %user_id, error = %e, "cannot record sync outcome");
        }
        let done = recorded.is_ok() && !matches!(outcome, Delivery::Failed { .. });
        (done, Some(version))
    }

    fn shown_url(&self) -> &str {
        self.shown_url.as_deref().unwrap_or_default()
    }

    fn endpoint(&self, base: &str, segments: &[&str]) -> String {
        let mut url = base.to_string();
        for segment in segments {
            url.push('/');
            url.push_str(&urlencode(segment));
        }
        url
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        }
    }

    /// POSTs the tokens.
    pub async fn push(&self, user_id: &str, tokens: &StoredTokens) -> Delivery {
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
        };
        let url = self.endpoint(
            base,
            &["api", "users", user_id, "google-calendar", "connect"],
        );
        let request = self.http.post(url).json(&body).headers(trace_headers());
        let result = self.authorized(request).send().await;
        match judge(result, false) {
            Delivery::Delivered => {
                tracing::info!(
                    userId = %user_id,
                    tokenExpiry = %token_expiry,
                    "✅ Tokens synced to microservice successfully"
                );
                Delivery::Delivered
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

    /// DELETEs the user's tokens; a 404 means they are already gone, which is what we want.
    pub async fn delete(&self, user_id: &str) -> Delivery {
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
        let request = self.http.delete(url).headers(trace_headers());
        let result = self.authorized(request).send().await;
        match judge(result, true) {
            Delivery::Delivered => {
                tracing::info!(userId = %user_id, "✅ Tokens deleted from microservice successfully");
                Delivery::Delivered
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

/// 2xx (and 404 for a delete) is delivered; anything else is a failure described the way
/// the seed's logs describe it.
fn judge(result: Result<reqwest::Response, reqwest::Error>, not_found_ok: bool) -> Delivery {
    match result {
        Ok(response) => {
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            if status.is_success() || (not_found_ok && status == StatusCode::NOT_FOUND) {
                Delivery::Delivered
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
