//! What every user actor shares: the store, the Google client, the sync dispatcher, metrics,
//! refresh settings, the global limit on concurrent refreshes and the count of refreshes in
//! progress. Also the refresh job itself, which runs outside the actor's mailbox.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::messages::RefreshOutcome;
use crate::{
    cluster::{Acting, Ownership},
    config::RefreshConfig,
    google::{GoogleClient, GoogleError},
    history::History,
    metrics::Metrics,
    store::{Expected, ReconnectReason, RefreshAnswer, Store, StoredTokens, SyncSnapshot},
    sync::SyncDispatcher,
    token_ids::RefreshTokenIds,
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

/// Saves of one refresh's answer, at most, and the pause between them: together about the
/// time a database failover takes (tests/it/cluster/db_failover.rs), and bounded again by the
/// lease, which a node that cannot reach its database loses after the TTL.
const SAVE_ATTEMPTS: u32 = 20;
const SAVE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

impl ActorContext {
    /// One refresh of one user: read the refresh token, ask Google, save first, then queue the
    /// push. Every write is conditional on the version read, so a reconnect or disconnect that
    /// happens meanwhile wins and this answer is dropped.
    pub async fn refresh(&self, user_id: &str) -> RefreshOutcome {
        let _counted = Refreshing::enter(&self.refreshing);
        let Ok(_permit) = self.permits.acquire().await else {
            return RefreshOutcome::Transient("shutting down".into());
        };
        // Asked after the permit, which may have been a long wait: a node calls Google only
        // inside a lease valid by its own clock.
        let acting = match self.ownership.act(user_id) {
            Ok(acting) => acting,
            Err(why) => {
                self.metrics.lease_skips.inc();
                return RefreshOutcome::NotHere(why);
            }
        };
        let fence = acting.fence();
        let credentials = match self.store.refresh_credentials(user_id).await {
            Ok(Some(credentials)) => credentials,
            Ok(None) => return self.superseded(user_id).await,
            Err(e) => return RefreshOutcome::Transient(format!("database: {e}")),
        };
        let version = credentials.version;
        // The end of a time-limited grant is final: at or after it, Google is not asked.
        if credentials
            .authorization_expires_at
            .is_some_and(|end| end <= crate::clock::now())
        {
            return match self.end_at_expiry(user_id, version, &acting).await {
                Ok(Some(_)) => RefreshOutcome::Revoked(ReconnectReason::AuthorizationExpired),
                Ok(None) => self.refused(user_id, &acting).await,
                Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
            };
        }
        // The tokens saved are also what the microservice must get: handed to the sync as
        // they are, they save it a read and two decryptions. Without a scope in Google's
        // answer the stored one stays, which only the row knows.
        let stored_end = credentials.authorization_expires_at;
        let (result, saved_tokens, new_end) = match self
            .google
            .refresh(user_id, &credentials.refresh_token)
            .await
            .inspect_err(|e| self.metrics.google_refresh_failure(e.reason()))
        {
            // An answer that comes back after the lease is gone is dropped: another node may
            // own the user by now, and an `invalid_grant` met this way is not a revocation.
            Ok(_) | Err(GoogleError::Revoked(_)) if !acting.still_valid() => {
                self.metrics.lease_skips.inc();
                return RefreshOutcome::NotHere(crate::cluster::NotActing::Uncertain);
            }
            Ok(mut tokens) => {
                tokens.authorization_expires_at =
                    moved_end(stored_end, tokens.authorization_expires_at);
                // Hashed only when they change (a rotation) or are missing: not three
                // digests on every refresh.
                let token_ids = (tokens.refresh_token.is_some() || !credentials.token_ids_stored)
                    .then(|| {
                        RefreshTokenIds::of(
                            tokens
                                .refresh_token
                                .as_ref()
                                .unwrap_or(&credentials.refresh_token)
                                .expose_secret(),
                        )
                    });
                // Google's answer exists nowhere else: a save that fails (the database
                // failing over, a connection cut) is tried again while the lease holds,
                // rather than asking Google again with a refresh token it may have rotated.
                // Safe to repeat: the write is conditional on the version read and the fence,
                // so a first attempt that did commit makes the next one find a newer version.
                let mut attempt = 1;
                let result = loop {
                    let result = self
                        .store
                        .save_refreshed(
                            user_id,
                            Expected {
                                version,
                                fence: fence.clone(),
                            },
                            RefreshAnswer {
                                access_token: &tokens.access_token,
                                rotated_refresh_token: tokens.refresh_token.as_ref(),
                                expires_at: tokens.expires_at,
                                scope: tokens.scope.as_deref(),
                                authorization_end: tokens.authorization_expires_at,
                                token_ids: token_ids.clone(),
                            },
                        )
                        .await;
                    if result.is_ok() || attempt >= SAVE_ATTEMPTS || !acting.still_valid() {
                        break result;
                    }
                    if let Err(e) = &result {
                        tracing::warn!(userId = %user_id, error = %e, attempt, "cannot save a refresh Google answered, trying again");
                    }
                    attempt += 1;
                    tokio::time::sleep(SAVE_RETRY_DELAY).await;
                };
                let saved = tokens.scope.map(|scope| StoredTokens {
                    access_token: tokens.access_token,
                    refresh_token: tokens.refresh_token.unwrap_or(credentials.refresh_token),
                    token_expiry: tokens.expires_at,
                    scope,
                });
                (result, saved, tokens.authorization_expires_at)
            }
            Err(GoogleError::Revoked(_)) => (
                self.store
                    .mark_needs_reconnect(user_id, version, fence, ReconnectReason::Revoked)
                    .await,
                None,
                None,
            ),
            Err(GoogleError::Transient(e)) => return RefreshOutcome::Transient(e.to_string()),
            Err(GoogleError::Rejected(e)) => return RefreshOutcome::Rejected(e.to_string()),
        };
        match result {
            Ok(Some(change)) => {
                let state = match (change.token_expiry, saved_tokens) {
                    (Some(_), Some(tokens)) => Some(SyncSnapshot::Connected {
                        version: change.version,
                        tokens,
                    }),
                    (None, _) => Some(SyncSnapshot::Disconnected {
                        version: change.version,
                    }),
                    (Some(_), None) => None,
                };
                match state {
                    Some(state) => self.sync.changed_to(user_id, state),
                    None => self.sync.changed(user_id),
                }
                if change.token_expiry.is_some() {
                    RefreshOutcome::Refreshed(change, new_end)
                } else {
                    RefreshOutcome::Revoked(ReconnectReason::Revoked)
                }
            }
            Ok(None) => self.refused(user_id, &acting).await,
            Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
        }
    }

    /// A write refused: by the fence (another process holds the shard's lease now, or a new
    /// epoch of it) or because a newer change won.
    pub(super) async fn refused(&self, user_id: &str, acting: &Acting<'_>) -> RefreshOutcome {
        if let (Some(shard), Some(fence)) = (acting.shard(), acting.fence())
            && matches!(self.store.shard_fence(shard).await, Ok(now) if now.as_ref() != Some(&fence))
        {
            let epoch = fence.epoch;
            self.metrics.fenced_writes.inc();
            tracing::warn!(userId = %user_id, shard, epoch, "refresh refused by the fence: the shard has a new owner");
            return RefreshOutcome::NotHere(crate::cluster::NotActing::NotHeld);
        }
        self.superseded(user_id).await
    }

    pub(super) async fn superseded(&self, user_id: &str) -> RefreshOutcome {
        match self.store.actor_seed(user_id).await {
            Ok(seed) => RefreshOutcome::Superseded(seed),
            Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
        }
    }
}

/// The grant's end a refresh answer names, if it moved: Google counts
/// `refresh_token_expires_in` in whole seconds from its answer, so the same end read again
/// lands up to a second (plus the answer's travel) earlier. Taken as news only beyond that,
/// the end the service shows and acts on does not creep forward with every refresh.
fn moved_end(
    stored: Option<chrono::DateTime<chrono::Utc>>,
    answered: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    const NOISE: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
    let answered = answered?;
    match stored {
        Some(stored) if (answered - stored).abs() < NOISE => None,
        _ => Some(answered),
    }
}

/// Keeps one refresh counted in [`ActorContext::refreshing`] while it lives, so that every way
/// out of a refresh (early returns, or its future dropped unfinished) uncounts it.
struct Refreshing<'a>(&'a AtomicUsize);

impl<'a> Refreshing<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        // Relaxed: the count only paces wake-ups, it guards no other memory.
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
