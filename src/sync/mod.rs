//! Pushes every token change to the microservice (CONTRACT section 5).
//!
//! The [`SyncDispatcher`] keeps one lane per user with at most one call in flight: a change
//! that arrives meanwhile only marks the lane dirty, and the next call reads the user's state
//! from the database at send time. So calls for one user never overlap, the last call always
//! carries the newest state, and intermediate states are skipped rather than replayed. The
//! durable `sync_state` column (written by `store`) lets a restart find unfinished pushes.
//! Failures retry with capped exponential backoff. This module never blocks its callers and
//! never touches actors.

mod client;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::Context;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{config::MicroserviceConfig, metrics::Metrics, store::Store};
pub use client::{Delivery, MicroserviceClient};

enum Command {
    /// The user changed; the context is the trace of whatever changed it.
    Changed(String, Context),
    Finished {
        user_id: String,
        delivered: bool,
    },
    RetryDue {
        user_id: String,
        generation: u64,
    },
}

#[derive(Default)]
struct Lane {
    /// Trace of the latest change, so its push shows up in the same trace.
    cx: Context,
    in_flight: bool,
    /// A change arrived while a call was in flight.
    dirty: bool,
    failures: u32,
    /// When the oldest change not yet in a call was queued.
    pending_since: Option<Instant>,
    /// When the oldest change the call in flight carries was queued.
    in_flight_since: Option<Instant>,
    /// Bumped whenever a call starts, so a retry timer from before it is ignored.
    generation: u64,
}

/// Cheap handle that queues "this user changed" notices.
#[derive(Clone)]
pub struct SyncDispatcher {
    tx: mpsc::UnboundedSender<Command>,
}

impl SyncDispatcher {
    /// Starts the dispatcher task.
    pub fn spawn(
        store: Store,
        config: &MicroserviceConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            lanes: HashMap::new(),
            client: MicroserviceClient::new(config)?,
            store,
            metrics,
            permits: Arc::new(Semaphore::new(config.concurrency)),
            retry_base: config.retry_base,
            retry_max: config.retry_max,
            tx: tx.downgrade(),
        };
        tokio::spawn(worker.run(rx, shutdown));
        Ok(Self { tx })
    }

    /// The user's tokens changed (or were cleared): make the microservice catch up.
    pub fn changed(&self, user_id: &str) {
        // The worker only stops when every handle is gone, so a send cannot fail while we
        // hold one; ignoring the result is safe.
        let cx = crate::telemetry::current_context();
        let _ = self.tx.send(Command::Changed(user_id.to_string(), cx));
    }
}

struct Worker {
    lanes: HashMap<String, Lane>,
    client: MicroserviceClient,
    store: Store,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    retry_base: Duration,
    retry_max: Duration,
    /// Weak, so that the worker stops once every `SyncDispatcher` handle is dropped.
    tx: mpsc::WeakUnboundedSender<Command>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        loop {
            let command = tokio::select! {
                _ = shutdown.cancelled() => break,
                command = rx.recv() => match command {
                    Some(command) => command,
                    None => break,
                },
            };
            match command {
                Command::Changed(user_id, cx) => self.on_changed(user_id, cx),
                Command::Finished { user_id, delivered } => self.on_finished(user_id, delivered),
                Command::RetryDue {
                    user_id,
                    generation,
                } => self.on_retry_due(user_id, generation),
            }
            self.metrics.sync_queue_depth.set(self.lanes.len() as i64);
        }
        // Unfinished work stays `pending` in the database and resumes at the next start.
        self.permits.close();
    }

    fn on_changed(&mut self, user_id: String, cx: Context) {
        let lane = self.lanes.entry(user_id.clone()).or_default();
        lane.cx = cx;
        lane.pending_since.get_or_insert_with(Instant::now);
        if lane.in_flight {
            lane.dirty = true;
        } else {
            // Also cuts a pending backoff short: a new change is worth trying at once.
            self.start(user_id);
        }
    }

    fn on_finished(&mut self, user_id: String, delivered: bool) {
        let Some(lane) = self.lanes.get_mut(&user_id) else {
            return;
        };
        lane.in_flight = false;
        if delivered && let Some(since) = lane.in_flight_since.take() {
            self.metrics.sync_lag.observe(since.elapsed().as_secs_f64());
        }
        if lane.dirty {
            self.start(user_id);
        } else if delivered {
            self.lanes.remove(&user_id);
        } else {
            lane.failures += 1;
            let delay = backoff(self.retry_base, self.retry_max, lane.failures);
            let generation = lane.generation;
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Command::RetryDue {
                        user_id,
                        generation,
                    });
                }
            });
        }
    }

    fn on_retry_due(&mut self, user_id: String, generation: u64) {
        let due = self
            .lanes
            .get(&user_id)
            .is_some_and(|lane| !lane.in_flight && lane.generation == generation);
        if due {
            self.start(user_id);
        }
    }

    fn start(&mut self, user_id: String) {
        let lane = self.lanes.entry(user_id.clone()).or_default();
        lane.in_flight = true;
        lane.dirty = false;
        // A retry keeps the age of the change it still carries.
        if let Some(since) = lane.pending_since.take() {
            lane.in_flight_since = Some(lane.in_flight_since.map_or(since, |s| s.min(since)));
        }
        lane.generation += 1;
        let cx = lane.cx.clone();
        let attempt = lane.failures + 1;
        let client = self.client.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let permits = self.permits.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let delivered = match permits.acquire_owned().await {
                Ok(_permit) => {
                    client
                        .deliver(&store, &metrics, &user_id, cx, attempt)
                        .await
                }
                Err(_) => false,
            };
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Command::Finished { user_id, delivered });
            }
        });
    }
}

/// `base * 2^(failures-1)`, capped at `max`, with up to 20% random jitter so that many users
/// failing together do not retry together.
pub fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let jitter = capped.mul_f64(rand::random::<f64>() * 0.2);
    capped.saturating_sub(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let first = backoff(base, max, 1);
        assert!(first <= base && first >= base.mul_f64(0.8), "{first:?}");
        let third = backoff(base, max, 3);
        assert!(third <= Duration::from_millis(400) && third >= Duration::from_millis(320));
        for failures in [10, 31, 1000, u32::MAX] {
            let d = backoff(base, max, failures);
            assert!(d <= max && d >= max.mul_f64(0.8), "{failures}: {d:?}");
        }
    }
}
