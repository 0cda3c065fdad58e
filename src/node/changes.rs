//! Telling a user's owner that the front door changed the user's row. On a single node, or
//! when this node owns the user, the supervisor and the sync dispatcher hear it directly, as
//! they always did; otherwise the change goes out as a notice on the cluster channel, for the
//! owner to reload the row, bring its actor up to date and push (`notices`, the listening
//! half). Must not touch: the row (the route has written it already).

use super::{Node, Notice};
use crate::store::{ActorStart, StoredTokens, SyncSnapshot};

/// What the route did to the user's row.
pub enum Change {
    /// New tokens were saved; with them when the route knows all of them, which spares the
    /// push a read of the row and two decryptions.
    Connected(ActorStart, Option<StoredTokens>),
    /// The tokens were cleared.
    Disconnected,
    /// The grant ended (a security event): the user waits for a reconnect, as saved.
    Ended(ActorStart),
    /// Nothing changed but the microservice should get the state again.
    Resync,
}

impl Node {
    /// Hands the change to whoever owns the user.
    pub async fn user_changed(&self, user_id: &str, change: Change) {
        if self.ownership.holds(user_id) {
            let known = match change {
                Change::Connected(start, tokens) => {
                    let version = start.version;
                    self.supervisor.user_connected(start);
                    tokens.map(|tokens| SyncSnapshot::Connected { version, tokens })
                }
                Change::Disconnected => {
                    self.supervisor.user_disconnected(user_id);
                    None
                }
                Change::Ended(start) => {
                    self.supervisor.user_connected(start);
                    None
                }
                Change::Resync => None,
            };
            match known {
                Some(state) => self.sync.changed_to(user_id, state),
                None => self.sync.changed(user_id),
            }
            return;
        }
        let notice = Notice::User(user_id.to_string());
        if let Err(e) = self.notices.send(&self.store, &notice).await {
            // The row is saved; the owner catches up when it next reloads or refreshes the user.
            tracing::warn!(userId = %user_id, error = %e, "cannot tell the user's node of a change");
        }
    }
}
