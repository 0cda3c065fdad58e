//! The app's HTTP client for events (docs/contract.md section 9): one POST of one event, its body
//! exactly the six keys, its `webhook-id` the event's stored id on every attempt, signed when
//! a secret is configured, and the answer judged: `2xx` is delivered, anything else a failure
//! with the `Retry-After` it asked for. A client of its own, so a slow app never holds a
//! connection the microservice pushes or Google's calls need. HTTP only: must not touch the
//! store or the metrics (the deliverer records how an attempt went).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use http::HeaderMap;
use reqwest::header;
use serde::Serialize;
use standardwebhooks::HEADER_WEBHOOK_ID;

use super::EventsError;
use crate::{
    config::AppEventsConfig, google::describe_reqwest_error, store::APP_EVENT_MAX_AGE,
    store::StoredAppEvent, sync::Signer,
};

/// The body the app receives: these six keys and no others (the id travels in `webhook-id`).
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    user_id: &'a str,
    occurred_at: String,
    google_email: Option<&'a str>,
    reason: Option<&'a str>,
    authorization_expires_at: Option<String>,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attempt {
    Delivered,
    /// `error` says why, as the sync's log lines do (`Request failed with status code 500`,
    /// `timeout: ...`); `retry_after` is the wait the app asked for, if any.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// POSTs events to `APP_EVENTS_URL`.
pub(super) struct AppClient {
    http: reqwest::Client,
    url: url::Url,
    signer: Option<Arc<Signer>>,
}

impl AppClient {
    pub(super) fn new(config: &AppEventsConfig) -> Result<Self, EventsError> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(5)))
                // A redirect is an answer that is not 2xx: retried, never followed.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("tokenwarden/", env!("CARGO_PKG_VERSION")))
                .build()?,
            url: config.url.clone(),
            signer: config.signer.clone(),
        })
    }

    /// One attempt at delivering `event`.
    pub(super) async fn send(&self, event: &StoredAppEvent) -> Attempt {
        let body = match serde_json::to_vec(&body_of(event)) {
            Ok(body) => body,
            Err(e) => {
                return Attempt::Failed {
                    error: format!("cannot encode the body: {e}"),
                    retry_after: None,
                };
            }
        };
        let mut request = self
            .http
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json");
        request = match &self.signer {
            // The signature covers exactly the bytes sent, under the event's own id.
            Some(signer) => request.headers(signer.headers_with_id(
                &event.event_id,
                Utc::now().timestamp(),
                &body,
            )),
            None => request.header(HEADER_WEBHOOK_ID, &event.event_id),
        };
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) => Attempt::Failed {
                error: format!(
                    "Request failed with status code {}",
                    response.status().as_u16()
                ),
                retry_after: retry_after(response.headers(), crate::clock::now()),
            },
            Err(e) => Attempt::Failed {
                error: describe_reqwest_error(&e),
                retry_after: None,
            },
        }
    }
}

/// The event as the app receives it: RFC 3339 in UTC with a `Z`, whole seconds, as the
/// microservice's `token_expiry`.
fn body_of(event: &StoredAppEvent) -> Body<'_> {
    let rfc3339 = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Secs, true);
    Body {
        event_type: &event.event_type,
        user_id: &event.user_id,
        occurred_at: rfc3339(event.occurred_at),
        google_email: event.google_email.as_deref(),
        reason: event.reason.as_deref(),
        authorization_expires_at: event.authorization_expires_at.map(rfc3339),
    }
}

/// The wait a `Retry-After` asks for at `now`: whole seconds or an HTTP date; none for a
/// malformed value or a date already past. Bounded by the age at which an event is dropped.
pub(super) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        // IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is RFC 2822's form.
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&Utc) - now).to_std().ok()?
        }
    };
    Some(wait.min(APP_EVENT_MAX_AGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> StoredAppEvent {
        let at = DateTime::parse_from_rfc3339("2025-12-13T10:30:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        StoredAppEvent {
            id: 7,
            event_id: "msg_1".into(),
            user_id: "alice".into(),
            shard: crate::ids::Shard::new(0),
            event_type: "connection.needs_reconnect".into(),
            occurred_at: at,
            google_email: Some("alice@example.com".into()),
            reason: Some("authorization_expired".into()),
            authorization_expires_at: Some(at),
            attempts: 0,
            next_attempt_at: at,
            last_error: None,
            delivered_at: None,
            created_at: at,
        }
    }

    #[test]
    fn the_body_is_exactly_the_six_keys_with_whole_seconds_and_nulls() {
        let body = serde_json::to_string(&body_of(&event())).unwrap();
        assert_eq!(
            body,
            r#"{"type":"connection.needs_reconnect","user_id":"alice","occurred_at":"2025-12-13T10:30:00Z","google_email":"alice@example.com","reason":"authorization_expired","authorization_expires_at":"2025-12-13T10:30:00Z"}"#
        );
        let mut bare = event();
        bare.event_type = "connection.disconnected".into();
        (
            bare.google_email,
            bare.reason,
            bare.authorization_expires_at,
        ) = (None, None, None);
        let body = serde_json::to_string(&body_of(&bare)).unwrap();
        assert_eq!(
            body,
            r#"{"type":"connection.disconnected","user_id":"alice","occurred_at":"2025-12-13T10:30:00Z","google_email":null,"reason":null,"authorization_expires_at":null}"#
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let wait = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(wait("2"), Some(Duration::from_secs(2)));
        assert_eq!(wait(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            wait("Wed, 21 Oct 2015 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(wait("Wed, 21 Oct 2015 07:27:00 GMT"), None, "already past");
        assert_eq!(wait("soon"), None);
        assert_eq!(wait("-5"), None);
        assert_eq!(wait("99999999999"), Some(APP_EVENT_MAX_AGE));
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}
