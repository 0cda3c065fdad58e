//! One delivery for one user: take the state to send (the one the change carried, or the row
//! as it is now), make the call through the [`MicroserviceClient`] under one of the shared
//! permits, and record how it went in the database and the metrics. Must not touch: HTTP
//! (the client's job) or the lanes (the dispatcher's, in `mod.rs`).

use std::sync::Arc;

use opentelemetry::Context;
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::client::{Delivery, MicroserviceClient};
use crate::{
    cluster::{NotActing, Ownership},
    history::{Activity, History},
    ids::{TokenVersion, UserId},
    metrics::Metrics,
    store::{Store, SyncSnapshot, cluster::Fence},
};

/// One call to make for one user.
pub(super) struct Call {
    pub user_id: UserId,
    /// The state to send, when the change that asked for the call carried it.
    pub known: Option<SyncSnapshot>,
    /// The trace of the change that caused the call.
    pub cx: Context,
    pub attempt: u32,
}

/// What every delivery shares; cheap to clone into each call's task.
#[derive(Clone)]
pub(super) struct Deliverer {
    pub client: MicroserviceClient,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Where deliveries are recorded for the console.
    pub history: Arc<History>,
    /// Bound the calls in flight to the microservice (`SYNC_CONCURRENCY`).
    pub permits: Arc<Semaphore>,
    /// Only the user's owner pushes, inside its lease, and its records are fenced.
    pub ownership: Arc<Ownership>,
}

/// How one delivery ended, for its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    /// Nothing is left to do for the change: delivered (or superseded, or skipped) and
    /// recorded, or no row to send, or the user is another node's to push.
    Done { sent: Option<TokenVersion> },
    /// Try again after the backoff: the call failed, its outcome could not be recorded, or it
    /// could not start (the row unread, no permit, a lease not known valid).
    Retry { sent: Option<TokenVersion> },
}

impl Finished {
    pub fn done(self) -> bool {
        matches!(self, Self::Done { .. })
    }

    /// The version the call sent, if it got as far as knowing it.
    pub fn sent(self) -> Option<TokenVersion> {
        match self {
            Self::Done { sent } | Self::Retry { sent } => sent,
        }
    }
}

/// What a call does at the microservice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `PUT` the user's tokens.
    Push,
    /// `DELETE` the user's tokens.
    Delete,
}

impl Op {
    fn of(snapshot: &SyncSnapshot) -> Self {
        match snapshot {
            SyncSnapshot::Connected { .. } => Self::Push,
            SyncSnapshot::Disconnected { .. } => Self::Delete,
        }
    }

    /// Its `op` label in `tokenwarden_syncs_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Push => "connect",
            Self::Delete => "delete",
        }
    }

    fn activity(self) -> Activity {
        match self {
            Self::Push => Activity::Push,
            Self::Delete => Activity::Delete,
        }
    }
}

impl Deliverer {
    /// Brings the microservice up to the user's state: `call.known` when the change carried
    /// it, else the row as it is now. Only the HTTP call holds a permit; reading and recording
    /// wait in the store's batches outside it. The call's span (`microservice.sync` or
    /// `microservice.delete`) joins `call.cx`.
    pub async fn deliver(&self, call: Call) -> Finished {
        let Call {
            user_id,
            known,
            cx,
            attempt,
        } = call;
        let user_id = user_id.as_str();
        let snapshot = match known {
            Some(snapshot) => snapshot,
            None => match self.store.sync_snapshot(user_id).await {
                Ok(Some(snapshot)) => snapshot,
                Ok(None) => return Finished::Done { sent: None },
                Err(e) => {
                    tracing::warn!(userId = %user_id, error = %e, "cannot read tokens to sync, will retry");
                    return Finished::Retry { sent: None };
                }
            },
        };
        let Ok(permit) = self.permits.acquire().await else {
            return Finished::Retry { sent: None };
        };
        // Asked after the permit (a wait): a node pushes only inside a lease valid by its own
        // clock. Another node's user is that node's to push; an uncertain lease waits.
        let acting = match self.ownership.act(user_id) {
            Ok(acting) => acting,
            Err(why) => {
                self.metrics.lease_skips.inc();
                return match why {
                    NotActing::NotHeld => Finished::Done { sent: None },
                    NotActing::Uncertain => Finished::Retry { sent: None },
                };
            }
        };
        let fence = acting.fence();
        let version = snapshot.version();
        let op = Op::of(&snapshot);
        let outcome = self.call(user_id, &snapshot, cx, attempt).await;
        drop(permit);
        self.remember(user_id, op, &outcome);
        let recorded = self.record(user_id, op, version, &outcome, fence).await;
        if recorded && !matches!(outcome, Delivery::Failed { .. }) {
            Finished::Done {
                sent: Some(version),
            }
        } else {
            Finished::Retry {
                sent: Some(version),
            }
        }
    }

    /// The HTTP call itself, in its span.
    async fn call(
        &self,
        user_id: &str,
        snapshot: &SyncSnapshot,
        cx: Context,
        attempt: u32,
    ) -> Delivery {
        let version = snapshot.version();
        let span = match snapshot {
            SyncSnapshot::Connected { .. } => tracing::info_span!(
                "microservice.sync",
                otel.kind = "client",
                user.id = %user_id,
                sync.attempt = attempt,
                sync.version = version.get(),
                http.response.status_code = tracing::field::Empty,
            ),
            SyncSnapshot::Disconnected { .. } => tracing::info_span!(
                "microservice.delete",
                otel.kind = "client",
                user.id = %user_id,
                sync.attempt = attempt,
                sync.version = version.get(),
                http.response.status_code = tracing::field::Empty,
            ),
        };
        let _ = span.set_parent(cx);
        match snapshot {
            SyncSnapshot::Connected { tokens, .. } => {
                self.client
                    .push(user_id, version, tokens)
                    .instrument(span)
                    .await
            }
            SyncSnapshot::Disconnected { .. } => {
                self.client.delete(user_id, version).instrument(span).await
            }
        }
    }

    /// Records the call's outcome in the database (fenced) and the metrics; whether the
    /// record was written.
    async fn record(
        &self,
        user_id: &str,
        op: Op,
        version: TokenVersion,
        outcome: &Delivery,
        fence: Option<Fence>,
    ) -> bool {
        let op = op.label();
        let recorded = match outcome {
            Delivery::Delivered => {
                self.metrics.sync(op, "ok");
                self.store.mark_synced(user_id, version, fence).await
            }
            // A newer change reached the microservice first: this version needs no more work
            // (the newer one is the lane's next call, or was already acknowledged).
            Delivery::Superseded => {
                self.metrics.sync(op, "superseded");
                self.store.mark_synced(user_id, version, fence).await
            }
            Delivery::Skipped => {
                self.metrics.sync(op, "skipped");
                self.store.mark_sync_skipped(user_id, version, fence).await
            }
            Delivery::Failed { error, .. } => {
                self.metrics.sync(op, "failed");
                self.store
                    .mark_sync_failed(user_id, version, error, fence)
                    .await
            }
        };
        if let Err(e) = &recorded {
            // The outcome is lost, so the call is repeated later; the microservice's
            // upsert and delete are idempotent.
            tracing::warn!(userId = %user_id, error = %e, "cannot record sync outcome");
        }
        recorded.is_ok()
    }

    /// Records a call's outcome in the console's history (a skipped call made none).
    fn remember(&self, user_id: &str, op: Op, outcome: &Delivery) {
        let (label, error) = match outcome {
            Delivery::Delivered => ("ok", None),
            Delivery::Superseded => ("superseded", None),
            Delivery::Skipped => return,
            Delivery::Failed { error, .. } => ("failed", Some(error.as_str())),
        };
        self.history
            .record(user_id, op.activity(), label, error.is_some(), error);
    }
}
