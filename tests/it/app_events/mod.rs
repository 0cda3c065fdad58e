//! Events to the app (docs/contract.md section 9, docs/app-events.md: Events to the app), until the connection
//! writes store them: events are recorded through `Store::record_app_event` and delivered by
//! the real service to the reference receiver, a real HTTP server on loopback.
//!
//! - `store`: the outbox's queries on both backends, with `now` injected;
//! - `delivery`: signed events, the same id on every attempt, `Retry-After`, per-user order,
//!   the 72-hour drop, nothing stored without `APP_EVENTS_URL`;
//! - `receiver`: the reference receiver checks what an app should;
//! - `settings`: the variables as `serve` reads them, and `--help`.

mod delivery;
mod receiver;
mod settings;
mod store;

use chrono::{DateTime, Utc};
use tokenwarden::store::{AppEvent, AppEventType};

/// A `connection.connected` event of `user_id` with its email.
pub fn connected(user_id: &str, at: DateTime<Utc>) -> AppEvent {
    AppEvent {
        google_email: Some(format!("{user_id}@example.com")),
        ..AppEvent::new(AppEventType::Connected, user_id, at)
    }
}
