//! The two moments of a time-limited grant (docs/contract.md section 9) as jobs of the user's
//! actor: the warning that the grant nears its end, and the end itself, which clears the tokens
//! with no call to Google and queues the DELETE at the microservice. Like a refresh, each runs
//! outside the actor's mailbox, only inside a valid lease, and fenced. Must not touch: Google, the
//! actor's state (the outcome goes back as a message).

use super::{
    context::ActorContext,
    messages::{DeadlineOutcome, RefreshOutcome},
};
use crate::{
    cluster::Acting,
    ids::TokenVersion,
    store::{StoreError, SyncSnapshot, TokenChange},
};

impl ActorContext {
    /// The grant of `user_id` (at `version`) reached its end.
    pub async fn expire_authorization(
        &self,
        user_id: &str,
        version: TokenVersion,
    ) -> DeadlineOutcome {
        let acting = match self.ownership.act(user_id) {
            Ok(acting) => acting,
            Err(why) => return DeadlineOutcome::NotHere(why),
        };
        match self.end_at_expiry(user_id, version, &acting).await {
            Ok(Some(change)) => DeadlineOutcome::Expired(change),
            Ok(None) => from_refusal(self.refused(user_id, &acting).await),
            Err(e) => DeadlineOutcome::Later(format!("database: {e}")),
        }
    }

    /// Ends the grant of `user_id` (at `version`) that reached its end, fenced by `acting`,
    /// and queues the DELETE at the microservice; `None` when the write was refused (the fence,
    /// a newer change, or an end moved since). For the timer and for a refresh alike.
    pub(super) async fn end_at_expiry(
        &self,
        user_id: &str,
        version: TokenVersion,
        acting: &Acting<'_>,
    ) -> Result<Option<TokenChange>, StoreError> {
        let change = self
            .store
            .expire_authorization(user_id, version, acting.fence(), crate::clock::now())
            .await?;
        if let Some(change) = &change {
            let version = change.version;
            self.sync
                .changed_to(user_id, SyncSnapshot::Disconnected { version });
        }
        Ok(change)
    }

    /// The app is told, once per grant, that the grant of `user_id` nears its end.
    pub async fn warn_authorization(&self, user_id: &str) -> DeadlineOutcome {
        let acting = match self.ownership.act(user_id) {
            Ok(acting) => acting,
            Err(why) => return DeadlineOutcome::NotHere(why),
        };
        match self
            .store
            .mark_authorization_warned(user_id, acting.fence())
            .await
        {
            Ok(_) => DeadlineOutcome::Warned,
            Err(e) => DeadlineOutcome::Later(format!("database: {e}")),
        }
    }
}

/// A refused write, as the refresh path judges it, in the deadline's terms.
fn from_refusal(outcome: RefreshOutcome) -> DeadlineOutcome {
    match outcome {
        RefreshOutcome::NotHere(why) => DeadlineOutcome::NotHere(why),
        RefreshOutcome::Superseded(start) => DeadlineOutcome::Superseded(start),
        other => DeadlineOutcome::Later(format!("{other:?}")),
    }
}
