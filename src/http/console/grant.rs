//! The grant's life on the users pages (docs/contract.md section 9): why a user must reconnect, in
//! words; when a time-limited grant ends; and the user's recent events to the app, delivered or
//! pending, read from the outbox so any node shows them. Events carry no token value, and neither
//! does anything here: type, reason, times, attempts and the app's last error only.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::pages::{countdown, when};
use crate::{
    http::Error,
    store::{ReconnectReason, Store, StoredAppEvent},
};

/// Events listed on a user's page: enough to see a grant's whole life (connected, expiring,
/// needs reconnect, reconnected) a few times over.
pub const RECENT_EVENTS: u64 = 20;

/// A reason as an operator reads it.
pub fn reason_text(reason: ReconnectReason) -> &'static str {
    match reason {
        ReconnectReason::Revoked => "revoked",
        ReconnectReason::AuthorizationExpired => "authorization expired",
        ReconnectReason::SecurityEvent => "security event",
    }
}

/// A reason stored as its wire string (an event's), in words; a string this version does not
/// know is shown as written.
fn stored_reason_text(reason: &str) -> &str {
    ReconnectReason::parse(reason).map_or(reason, |r| reason_text(r))
}

/// The status cell: the status and, for a user who must reconnect, why
/// ("needs_reconnect — authorization expired").
pub fn status(status: &'static str, reason: Option<ReconnectReason>) -> Markup {
    html! {
        span class={"status-" (status)} { (status) }
        @if let Some(reason) = reason.filter(|_| status == "needs_reconnect") {
            " — " span.reason data-reason=(reason.as_str()) { (reason_text(reason)) }
        }
    }
}

/// When the grant ends: a time with how far off it is, or "ongoing" for ongoing access.
pub fn grant_end(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    when(at, now, "ongoing")
}

/// The user's recent events to the app, newest first, or why there are none to show.
pub async fn events_section(
    store: &Store,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Markup, Error> {
    if !store.app_events().enabled() {
        return Ok(html! {
            h2 { "Events to the app" }
            p.muted { "Events to the app are off (APP_EVENTS_URL is not set)." }
        });
    }
    let events = store.recent_app_events(user_id, RECENT_EVENTS).await?;
    Ok(events_table(&events, now))
}

fn events_table(events: &[StoredAppEvent], now: DateTime<Utc>) -> Markup {
    html! {
        h2 { "Events to the app" }
        @if events.is_empty() {
            p.muted { "No event for this user in the last 72 hours." }
        } @else {
            table #app-events {
                tr {
                    th { "Type" } th { "Reason" } th { "Grant ends" } th { "Occurred" }
                    th { "Delivery" } th { "Failed attempts" } th { "Next attempt" } th { "Last error" }
                }
                @for event in events {
                    tr data-type=(event.event_type) {
                        td { (event.event_type) }
                        td { (event.reason.as_deref().map(stored_reason_text).unwrap_or("")) }
                        td {
                            @if event.authorization_expires_at.is_some() {
                                (when(event.authorization_expires_at, now, ""))
                            }
                        }
                        td { (when(Some(event.occurred_at), now, "")) }
                        @match event.delivered_at {
                            Some(at) => {
                                td.delivered { "delivered " (when(Some(at), now, "")) }
                                td { (event.attempts) }
                                td {}
                            }
                            None => {
                                td.pending { "pending" }
                                td { (event.attempts) }
                                td { (countdown(Some(event.next_attempt_at), now)) }
                            }
                        }
                        td { (event.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(delivered: bool) -> StoredAppEvent {
        let now = crate::clock::now();
        StoredAppEvent {
            id: 1,
            event_id: "msg_x".into(),
            user_id: "alice".into(),
            shard: crate::ids::Shard::new(0),
            event_type: "connection.needs_reconnect".into(),
            occurred_at: now,
            google_email: None,
            reason: Some("authorization_expired".into()),
            authorization_expires_at: Some(now),
            attempts: 2,
            next_attempt_at: now,
            last_error: Some("HTTP 500".into()),
            delivered_at: delivered.then_some(now),
            created_at: now,
        }
    }

    #[test]
    fn the_status_names_the_reason_only_for_a_user_who_must_reconnect() {
        let expired = Some(ReconnectReason::AuthorizationExpired);
        let shown = status("needs_reconnect", expired).into_string();
        assert!(shown.contains("needs_reconnect") && shown.contains("authorization expired"));
        assert!(!status("active", expired).into_string().contains("expired"));
    }

    #[test]
    fn events_show_their_reason_and_delivery() {
        let html = events_table(&[event(false), event(true)], crate::clock::now()).into_string();
        assert!(html.contains("connection.needs_reconnect"));
        assert!(html.contains("authorization expired"));
        assert!(html.contains("pending") && html.contains("delivered"));
        assert!(html.contains("HTTP 500"));
    }
}
