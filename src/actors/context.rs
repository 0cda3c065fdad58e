//! What every user actor shares: the store, the Google client, the sync dispatcher, metrics,
//! refresh settings, the global limit on concurrent refreshes and the count of refreshes in
//! progress. The jobs that run on it outside the actor's mailbox live in their own files:
//! `refresh` (the refresh of one user) and `deadline` (the end of a time-limited grant).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize},
};

use tokio::sync::Semaphore;

use crate::{
    cluster::Ownership, config::RefreshConfig, google::GoogleClient, history::History,
    metrics::Metrics, store::Store, sync::SyncDispatcher,
};

/// Shared by all user actors; read-only after start.
pub struct ActorContext {
    pub store: Store,
    /// Which users this process acts for, and the fence of their writes.
    pub ownership: Arc<Ownership>,
    pub google: GoogleClient,
    pub sync: SyncDispatcher,
    pub metrics: Arc<Metrics>,
    /// Where refresh outcomes are recorded for the console.
    pub history: Arc<History>,
    pub refresh: RefreshConfig,
    /// How long before a time-limited grant ends the app is warned; `None` without app
    /// events (nothing to warn).
    pub warning: Option<std::time::Duration>,
    /// Bounds refreshes in flight towards Google, so a crowd of users due at the same time
    /// does not open a crowd of connections.
    pub permits: Arc<Semaphore>,
    /// Refreshes started and not yet returned, those still waiting for a permit included: the
    /// supervisor wakes parked users only while this leaves room, so a backlog waits parked
    /// (a few hundred bytes each) rather than as live actors queued at the semaphore.
    pub refreshing: AtomicUsize,
    /// Set by the supervisor while overdue users wait parked for lack of wake budget. A user
    /// that has just refreshed then parks too instead of staying live, so that every next
    /// refresh queues in the one wake schedule, ordered by due time: a live user with a short
    /// period would otherwise refresh again and again ahead of the parked ones.
    pub backlog: AtomicBool,
}
