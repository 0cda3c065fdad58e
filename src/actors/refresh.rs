//! The refresh of one user, the job an actor's timer or an operator starts, run outside the
//! actor's mailbox, in steps: a permit and the lease (`permit_and_lease`), Google's answer (`ask_google`),
//! the answer saved first (`save`), the saved state handed to the sync (`hand_to_sync`), and
//! the outcome the actor acts on (`classify`). Every write is conditional on the version read,
//! so a reconnect or disconnect that happens meanwhile wins and this answer is dropped. Must
//! not touch: the actor's state (the outcome goes back as a message), HTTP.

use std::sync::atomic::{AtomicUsize, Ordering};

use secrecy::ExposeSecret;
use tokio::sync::SemaphorePermit;

use super::{context::ActorContext, messages::RefreshOutcome};
use crate::{
    cluster::{Acting, NotActing},
    google::{GoogleError, TokenSet},
    store::{
        Expected, ReconnectReason, RefreshAnswer, RefreshCredentials, StoreError, StoredTokens,
        SyncSnapshot, TokenChange,
    },
    token_ids::RefreshTokenIds,
};

/// Google's answer to a refresh, once it may be written.
enum Answer {
    /// New tokens (with the grant's end as moved, if it moved).
    Tokens(TokenSet),
    /// The refresh token no longer works: the user must reconnect.
    Revoked,
}

/// What `save` wrote.
struct Saved {
    /// The change written; `None` when the write was refused (the fence, or a newer change).
    written: Result<Option<TokenChange>, StoreError>,
    /// The tokens saved, when all of them are known here: what the microservice must get.
    tokens: Option<StoredTokens>,
    /// The grant's end the answer moved, if it did.
    new_end: Option<chrono::DateTime<chrono::Utc>>,
}

/// Saves of one refresh's answer, at most, and the pause between them: together about the
/// time a database failover takes (tests/it/cluster/db_failover.rs), and bounded again by the
/// lease, which a node that cannot reach its database loses after the TTL.
const SAVE_ATTEMPTS: u32 = 20;
const SAVE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

impl ActorContext {
    /// One refresh of one user: read the refresh token, ask Google, save first, then queue the
    /// push.
    pub async fn refresh(&self, user_id: &str) -> RefreshOutcome {
        let _counted = Refreshing::enter(&self.refreshing);
        let (_permit, acting) = match self.permit_and_lease(user_id).await {
            Ok(started) => started,
            Err(outcome) => return outcome,
        };
        let credentials = match self.store.refresh_credentials(user_id).await {
            Ok(Some(credentials)) => credentials,
            Ok(None) => return self.superseded(user_id).await,
            Err(e) => return RefreshOutcome::Transient(format!("database: {e}")),
        };
        // The end of a time-limited grant is final: at or after it, Google is not asked.
        if credentials
            .authorization_expires_at
            .is_some_and(|end| end <= crate::clock::now())
        {
            return match self
                .end_at_expiry(user_id, credentials.version, &acting)
                .await
            {
                Ok(Some(_)) => RefreshOutcome::Revoked(ReconnectReason::AuthorizationExpired),
                Ok(None) => self.refused(user_id, &acting).await,
                Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
            };
        }
        let answer = match self.ask_google(user_id, &credentials, &acting).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        let saved = self.save(user_id, credentials, answer, &acting).await;
        match saved.written {
            Ok(Some(change)) => {
                self.hand_to_sync(user_id, &change, saved.tokens);
                classify(change, saved.new_end)
            }
            Ok(None) => self.refused(user_id, &acting).await,
            Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
        }
    }

    /// Takes a refresh permit, then the user's lease: asked after the permit, which may have
    /// been a long wait, so a node calls Google only inside a lease valid by its own clock.
    async fn permit_and_lease(
        &self,
        user_id: &str,
    ) -> Result<(SemaphorePermit<'_>, Acting<'_>), RefreshOutcome> {
        let Ok(permit) = self.permits.acquire().await else {
            return Err(RefreshOutcome::Transient("shutting down".into()));
        };
        match self.ownership.act(user_id) {
            Ok(acting) => Ok((permit, acting)),
            Err(why) => {
                self.metrics.lease_skips.inc();
                Err(RefreshOutcome::NotHere(why))
            }
        }
    }

    /// Asks Google for new tokens; an answer that ends the refresh here (a failure to retry,
    /// a refusal, or one that came back after the lease is gone) is the `Err`.
    async fn ask_google(
        &self,
        user_id: &str,
        credentials: &RefreshCredentials,
        acting: &Acting<'_>,
    ) -> Result<Answer, RefreshOutcome> {
        let answer = self
            .google
            .refresh(user_id, &credentials.refresh_token)
            .await
            .inspect_err(|e| self.metrics.google_refresh_failure(e.reason()));
        match answer {
            // An answer that comes back after the lease is gone is dropped: another node may
            // own the user by now, and an `invalid_grant` met this way is not a revocation.
            Ok(_) | Err(GoogleError::Revoked(_)) if !acting.still_valid() => {
                self.metrics.lease_skips.inc();
                Err(RefreshOutcome::NotHere(NotActing::Uncertain))
            }
            Ok(mut tokens) => {
                tokens.authorization_expires_at = moved_end(
                    credentials.authorization_expires_at,
                    tokens.authorization_expires_at,
                );
                Ok(Answer::Tokens(tokens))
            }
            Err(GoogleError::Revoked(_)) => Ok(Answer::Revoked),
            Err(GoogleError::Transient(e)) => Err(RefreshOutcome::Transient(e.to_string())),
            Err(GoogleError::Rejected(e)) => Err(RefreshOutcome::Rejected(e.to_string())),
        }
    }

    /// Writes the answer, fenced and conditional on the version read.
    async fn save(
        &self,
        user_id: &str,
        credentials: RefreshCredentials,
        answer: Answer,
        acting: &Acting<'_>,
    ) -> Saved {
        let (version, fence) = (credentials.version, acting.fence());
        let tokens = match answer {
            Answer::Revoked => {
                return Saved {
                    written: self
                        .store
                        .mark_needs_reconnect(user_id, version, fence, ReconnectReason::Revoked)
                        .await,
                    tokens: None,
                    new_end: None,
                };
            }
            Answer::Tokens(tokens) => tokens,
        };
        // Hashed only when they change (a rotation) or are missing: not three digests on
        // every refresh.
        let token_ids =
            (tokens.refresh_token.is_some() || !credentials.token_ids_stored).then(|| {
                RefreshTokenIds::of(
                    tokens
                        .refresh_token
                        .as_ref()
                        .unwrap_or(&credentials.refresh_token)
                        .expose_secret(),
                )
            });
        // Google's answer exists nowhere else: a save that fails (the database failing over,
        // a connection cut) is tried again while the lease holds, rather than asking Google
        // again with a refresh token it may have rotated. Safe to repeat: the write is
        // conditional on the version read and the fence, so a first attempt that did commit
        // makes the next one find a newer version.
        let mut attempt = 1;
        let written = loop {
            let written = self
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
            let Err(e) = &written else { break written };
            if attempt >= SAVE_ATTEMPTS || !acting.still_valid() {
                break written;
            }
            tracing::warn!(userId = %user_id, error = %e, attempt, "cannot save a refresh Google answered, trying again");
            attempt += 1;
            tokio::time::sleep(SAVE_RETRY_DELAY).await;
        };
        // The tokens saved are also what the microservice must get: handed to the sync as
        // they are, they save it a read and two decryptions. Without a scope in Google's
        // answer the stored one stays, which only the row knows.
        let saved = tokens.scope.map(|scope| StoredTokens {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token.unwrap_or(credentials.refresh_token),
            token_expiry: tokens.expires_at,
            scope,
        });
        Saved {
            written,
            tokens: saved,
            new_end: tokens.authorization_expires_at,
        }
    }

    /// Queues the push of the change written, with its state when it is known here.
    fn hand_to_sync(&self, user_id: &str, change: &TokenChange, tokens: Option<StoredTokens>) {
        let state = match (change.token_expiry, tokens) {
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
    }
    /// A write refused: by the fence (another process holds the shard's lease now, or a new
    /// epoch of it) or because a newer change won.
    pub(super) async fn refused(&self, user_id: &str, acting: &Acting<'_>) -> RefreshOutcome {
        if let (Some(shard), Some(fence)) = (acting.shard(), acting.fence())
            && matches!(self.store.shard_fence(shard).await, Ok(now) if now.as_ref() != Some(&fence))
        {
            let (shard, epoch) = (shard.get(), fence.epoch.get());
            self.metrics.fenced_writes.inc();
            tracing::warn!(userId = %user_id, shard, epoch, "refresh refused by the fence: the shard has a new owner");
            return RefreshOutcome::NotHere(NotActing::NotHeld);
        }
        self.superseded(user_id).await
    }

    pub(super) async fn superseded(&self, user_id: &str) -> RefreshOutcome {
        match self.store.actor_start(user_id).await {
            Ok(start) => RefreshOutcome::Superseded(start),
            Err(e) => RefreshOutcome::Transient(format!("database: {e}")),
        }
    }
}

/// The outcome of a change written: refreshed, or revoked when the write cleared the tokens.
fn classify(change: TokenChange, new_end: Option<chrono::DateTime<chrono::Utc>>) -> RefreshOutcome {
    if change.token_expiry.is_some() {
        RefreshOutcome::Refreshed(change, new_end)
    } else {
        RefreshOutcome::Revoked(ReconnectReason::Revoked)
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
