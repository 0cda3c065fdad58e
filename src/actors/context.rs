//! What every user actor shares: the store, the Google client, the sync dispatcher, metrics,
//! refresh settings and the global limit on concurrent refreshes. Also the refresh job itself,
//! which runs outside the actor's mailbox.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::messages::RefreshOutcome;
use crate::{
    config::RefreshConfig,
    google::{GoogleClient, GoogleError},
    metrics::Metrics,
    store::Store,
    sync::SyncDispatcher,
};

/// Shared by all user actors; read-only after start.
pub struct ActorContext {
    pub store: Store,
    pub google: GoogleClient,
    pub sync: SyncDispatcher,
    pub metrics: Arc<Metrics>,
    pub refresh: RefreshConfig,
    /// Bounds refreshes in flight towards Google, so a crowd of users due at the same time
    /// does not open a crowd of connections.
    pub permits: Arc<Semaphore>,
}

impl ActorContext {
    /// One refresh of one user: read the refresh token, ask Google, save first, then queue the
    /// push. Every write is conditional on the version read, so a reconnect or disconnect that
    /// happens meanwhile wins and this answer is dropped.
    pub async fn refresh(&self, user_id: &str) -> RefreshOutcome {
        let Ok(_permit) = self.permits.acquire().await else {
            return RefreshOutcome::Transient("shutting down".into());
        };
        let credentials = match self.store.refresh_credentials(user_id).await {
            Ok(Some(credentials)) => credentials,
            Ok(None) => return self.superseded(user_id).await,
            Err(e) => return RefreshOutcome::Transient(format!("database: {e}")),
        };
        let version = credentials.version;
        let result = match self
            .google
            .refresh(user_id, &credentials.refresh_token)
            .await
        {
            Ok(tokens) => {
                self.store
                    .save_refreshed(
                        user_id,
                        version,
                        &tokens.access_token,
                        tokens.refresh_token.as_ref(),
                        tokens.expires_at,
                        tokens.scope.as_deref(),
                    )
                    .await
            }
            Err(GoogleError::Revoked(_)) => self.store.mark_revoked(user_id, version).await,
            Err(GoogleError::Transient(e)) => return RefreshOutcome::Transient(e),
            Err(GoogleError::Rejected(e)) => return RefreshOutcome::Rejected(e),
        };
        match result {
            Ok(Some(change)) => {
                self.sync.changed(user_id);
                if change.token_expiry.is_some() {
                    RefreshOutcome::Refreshed(change)
                } else {
                    RefreshOutcome::Revoked
                }
            }
            Ok(None) => self.superseded(user_id).await,
            Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
        }
    }

    async fn superseded(&self, user_id: &str) -> RefreshOutcome {
        match self.store.actor_seed(user_id).await {
            Ok(seed) => RefreshOutcome::Superseded(seed),
            Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
        }
    }
}
