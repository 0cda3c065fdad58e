//! The two moments of a time-limited grant (CONTRACT 9) as jobs of the user's actor: the
//! warning that the grant nears its end, and the end itself, which clears the tokens with no
//! call to Google and queues the DELETE at the microservice. Like a refresh, each runs outside
//! the actor's mailbox, only inside a valid lease, and fenced. Must not touch: Google, the
//! actor's state (the outcome goes back as a message).

use chrono::Utc;

use super::{
    context::ActorContext,
    messages::{DeadlineOutcome, RefreshOutcome},
};
use crate::store::SyncSnapshot;

impl ActorContext {
    /// The grant of `user_id` (at `version`) reached its end.
    pub async fn expire_authorization(&self, user_id: &str, version: i64) -> DeadlineOutcome {
        let acting = match self.ownership.act(user_id) {
            Ok(acting) => acting,
            Err(why) => return DeadlineOutcome::NotHere(why),
        };
        let now = Utc::now();
        match self
            .store
            .expire_authorization(user_id, version, acting.fence(), now)
            .await
        {
            Ok(Some(change)) => {
                let version = change.version;
                self.sync
                    .changed_to(user_id, SyncSnapshot::Disconnected { version });
                DeadlineOutcome::Expired(change)
            }
            Ok(None) => from_refusal(self.refused(user_id, &acting).await),
            Err(e) => DeadlineOutcome::Later(format!("database: {e}")),
        }
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
        RefreshOutcome::Superseded(seed) => DeadlineOutcome::Superseded(seed),
        other => DeadlineOutcome::Later(format!("{other:?}")),
    }
}
