//! The one task per node that delivers events to the app: it reads a bounded batch of due
//! events (each the first undelivered one of its user, of the users this node owns), POSTs
//! them at a bounded concurrency, records each outcome, and sleeps until the soonest next one
//! is due, a wake ([`crate::store::AppEvents::wake`]) or the next poll, whichever comes first.
//! The poll picks up events written on other nodes. Memory holds one batch at most, whatever
//! the number of users waiting. Must not touch: the users' rows, actors, the microservice.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    backoff::retry_wait,
    client::{AppClient, Attempt},
};
use crate::{
    cluster::Ownership,
    ids::Shard,
    metrics::Metrics,
    store::{APP_EVENT_MAX_AGE, AppEventType, Store, StoredAppEvent},
};

/// Events read at once: the bound of the deliverer's memory.
const BATCH: u64 = 64;
/// Attempts in flight at once.
const CONCURRENCY: usize = 16;
/// Longest sleep without looking at the table: how late an event written by another node (a
/// front-door write on a non-owner) can be noticed.
const POLL: Duration = Duration::from_secs(1);
/// How often events past their age are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most events one sweep drops (the rest at the next, which then comes at once).
const SWEEP_LIMIT: u64 = 1000;
/// How often the pending gauge is counted.
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// What became of one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// An attempt was made (and recorded).
    Attempted,
    /// Not this node's to send now (its lease is not valid here), or shutting down.
    Skipped,
    /// Past its age: the sweep drops it.
    Expired,
}

/// Delivers the events of the users this node owns.
pub(super) struct Deliverer {
    pub store: Store,
    pub client: AppClient,
    pub ownership: Arc<Ownership>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Failed attempts logged as warnings at most once per [`FAILURE_LOG_EVERY`]; the rest at
    /// debug, counted here and named in the next warning. An app down for minutes would
    /// otherwise write a line per event per attempt, hundreds of megabytes for a large user
    /// base (the load test's outage run shows it), and the metrics count every attempt anyway.
    pub failure_log: crate::log_limit::LogLimit,
}

/// Least time between two warnings of failed attempts.
pub(super) const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl Deliverer {
    pub(super) async fn run(self) {
        let mut next_sweep = Instant::now();
        let mut next_count = Instant::now();
        while !self.shutdown.is_cancelled() {
            let shards = self.scope();
            let shards = shards.as_deref();
            if Instant::now() >= next_sweep {
                let full = self.sweep(shards).await;
                next_sweep = Instant::now() + if full { Duration::ZERO } else { SWEEP_EVERY };
            }
            if Instant::now() >= next_count {
                if let Ok(pending) = self.store.pending_app_events(shards).await {
                    self.metrics
                        .app_events_pending
                        .set(i64::try_from(pending).unwrap_or(i64::MAX));
                }
                next_count = Instant::now() + COUNT_EVERY;
            }
            let wait = match self
                .store
                .due_app_events(crate::clock::now(), shards, BATCH)
                .await
            {
                Ok(batch) if batch.is_empty() => self.until_next_due(shards).await,
                Ok(batch) => {
                    let outcomes = self.deliver_batch(batch).await;
                    if outcomes.contains(&Outcome::Expired) {
                        next_sweep = Instant::now();
                    }
                    if outcomes.contains(&Outcome::Attempted) {
                        // More may be due: read again at once.
                        continue;
                    }
                    // Nothing this node may send now (its leases are renewed meanwhile), or
                    // only events the next sweep drops.
                    POLL
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read due events to the app, will retry");
                    POLL
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = self.store.app_events().woken() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The shards whose events are this node's: all on a single node, its held ones on a
    /// cluster.
    fn scope(&self) -> Option<Vec<Shard>> {
        self.ownership
            .is_cluster()
            .then(|| self.ownership.held_shards())
    }

    /// How long until the soonest pending event is due, at most [`POLL`].
    async fn until_next_due(&self, shards: Option<&[Shard]>) -> Duration {
        match self.store.next_app_event_due(shards).await {
            Ok(Some(due)) => (due - crate::clock::now())
                .to_std()
                .unwrap_or_default()
                .min(POLL),
            Ok(None) => POLL,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when the next event to the app is due");
                POLL
            }
        }
    }

    async fn deliver_batch(&self, batch: Vec<StoredAppEvent>) -> Vec<Outcome> {
        futures::stream::iter(batch)
            .map(|event| self.deliver(event))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    /// One attempt at `event`, inside the user's lease (held through the call and its record,
    /// so a shard is handed over only once its attempts ended, and the next owner starts after
    /// them).
    async fn deliver(&self, event: StoredAppEvent) -> Outcome {
        if self.shutdown.is_cancelled() {
            return Outcome::Skipped;
        }
        if expired(&event, crate::clock::now()) {
            return Outcome::Expired;
        }
        // Held until the outcome is recorded: a new owner then never reads it as still due.
        let Ok(_acting) = self.ownership.act(&event.user_id) else {
            self.metrics.lease_skips.inc();
            return Outcome::Skipped;
        };
        let outcome = self.client.send(&event).await;
        let kind = event_label(&event);
        match outcome {
            Attempt::Delivered => {
                self.metrics.app_event(kind, "delivered");
                tracing::info!(
                    userId = %event.user_id,
                    eventType = %event.event_type,
                    eventId = %event.event_id,
                    "✅ Event delivered to the app"
                );
                if let Err(e) = self
                    .store
                    .app_event_delivered(event.id, crate::clock::now())
                    .await
                {
                    // Not recorded: it is sent again later (at least once; the app drops
                    // the duplicate by its webhook-id).
                    tracing::warn!(eventId = %event.event_id, error = %e, "cannot record a delivered event");
                }
            }
            Attempt::Failed { error, retry_after } => {
                self.metrics.app_event(kind, "failed");
                let attempt = u32::try_from(event.attempts).unwrap_or(0).saturating_add(1);
                let wait = retry_wait(attempt, retry_after);
                match self.failure_log.warn_now() {
                    Some(quiet) => tracing::warn!(
                        userId = %event.user_id,
                        eventType = %event.event_type,
                        eventId = %event.event_id,
                        error = %error,
                        attempt,
                        retryInSecs = wait.as_secs_f64(),
                        alsoFailedSinceLastWarning = quiet,
                        "❌ Failed to deliver event to the app, will retry"
                    ),
                    None => tracing::debug!(
                        userId = %event.user_id,
                        eventId = %event.event_id,
                        error = %error,
                        attempt,
                        "❌ Failed to deliver event to the app, will retry"
                    ),
                }
                let next = crate::clock::now() + wait;
                if let Err(e) = self.store.app_event_failed(&event, next, &error).await {
                    // Not recorded: the event stays due and is tried at the next read.
                    tracing::warn!(eventId = %event.event_id, error = %e, "cannot record a failed event");
                }
            }
        }
        Outcome::Attempted
    }

    /// Drops this node's events older than [`APP_EVENT_MAX_AGE`], each logged and counted;
    /// answers whether the sweep was full (more may be left).
    async fn sweep(&self, shards: Option<&[Shard]>) -> bool {
        let dropped = match self
            .store
            .expire_app_events(crate::clock::now(), shards, SWEEP_LIMIT)
            .await
        {
            Ok(dropped) => dropped,
            Err(e) => {
                tracing::warn!(error = %e, "cannot drop expired events to the app");
                return false;
            }
        };
        for event in &dropped {
            self.metrics.app_event(event_label(event), "dropped");
            tracing::error!(
                userId = %event.user_id,
                eventType = %event.event_type,
                eventId = %event.event_id,
                attempts = event.attempts,
                lastError = event.last_error.as_deref().unwrap_or(""),
                "🗑️ Event to the app dropped: undelivered for 72 hours"
            );
        }
        dropped.len() as u64 >= SWEEP_LIMIT
    }
}

/// Whether `event` is past the age at which it is dropped instead of sent.
fn expired(event: &StoredAppEvent, now: chrono::DateTime<Utc>) -> bool {
    (now - event.created_at)
        .to_std()
        .is_ok_and(|age| age >= APP_EVENT_MAX_AGE)
}

/// The metrics label of an event's type: one of the known types, else `other`.
fn event_label(event: &StoredAppEvent) -> &'static str {
    event.kind().map_or("other", AppEventType::as_str)
}
