//! Google's security events about one user (docs/contract.md section 10), on the user's page: each
//! recorded SET's type, when it came and what was done, newest first, read from the database so any
//! node shows them. A record carries no token: type, time and outcome only.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::pages::when;
use crate::{http::Error, store::Store};

/// Security events listed on a user's page.
const RECENT: u64 = 20;

/// The type URI's last segment (`tokens-revoked`), as operators read it.
fn short(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap_or(uri)
}

/// The user's recent security events from Google.
pub async fn section(store: &Store, user_id: &str, now: DateTime<Utc>) -> Result<Markup, Error> {
    let events = store.risc_events_of(user_id, RECENT).await?;
    Ok(html! {
        h2 { "Security events from Google" }
        @if events.is_empty() {
            p.muted { "No security event for this user in the last 30 days." }
        } @else {
            table #risc-events {
                tr { th { "Event" } th { "Received" } th { "Outcome" } }
                @for event in &events {
                    tr data-type=(short(&event.event_type)) {
                        td { (short(&event.event_type)) }
                        td { (when(Some(event.received_at), now, "")) }
                        td { (event.outcome) }
                    }
                }
            }
        }
    })
}
