//! Events to the app (docs/contract.md section 9, docs/app-events.md: Events to the app): each change of a
//! user's connection reaches `APP_EVENTS_URL` as one signed JSON POST, at least once and, per user,
//! in order, however long the app is away (up to 72 hours).
//!
//! The events themselves are rows of the store's outbox, written in the same transaction as
//! the change ([`Store::insert_app_event`](crate::store::Store::insert_app_event)); this module
//! only delivers them. One task per node ([`spawn`]) sends the events of the users whose
//! shards the node holds (all of them on a single node), with its own HTTP client, so trouble
//! at the app never delays the OAuth flow, the refreshes or the microservice pushes. Must not
//! touch: the users' rows, actors, the microservice's client.
//!
//! - `deliverer`: the task: what is due, one attempt each, the outcome recorded, the sweep;
//! - `client`: the app's HTTP client, HTTP only;
//! - `backoff`: the waits between attempts.

mod backoff;
mod client;
mod deliverer;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::store::{AppEvent, AppEventType, AppEvents, ReconnectReason, StoredAppEvent};
pub use backoff::{FIRST_RETRY, MAX_WAIT, retry_wait};

use crate::{cluster::Ownership, config::AppEventsConfig, metrics::Metrics, store::Store};

/// Why the delivery of events cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot build the HTTP client of events to the app: {0}")]
    Client(#[from] reqwest::Error),
}

/// Starts this node's deliverer of events to the app; it ends soon after `shutdown` is
/// cancelled, once the attempts in flight have ended (each within `APP_EVENTS_TIMEOUT_MS`).
/// `store` must have events on ([`Store::with_app_events`]), or nothing is ever stored.
pub fn spawn(
    config: &AppEventsConfig,
    store: Store,
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, EventsError> {
    let deliverer = deliverer::Deliverer {
        store,
        client: client::AppClient::new(config)?,
        ownership,
        metrics,
        shutdown,
        failure_log: crate::log_limit::LogLimit::new(deliverer::FAILURE_LOG_EVERY),
    };
    Ok(tokio::spawn(deliverer.run()))
}
