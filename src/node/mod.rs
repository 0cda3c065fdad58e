//! This process as a member of its cluster (docs/contract.md section 8; design in
//! `docs/cluster.md`): the layer above the actors and the sync that makes one node of many.
//! It owns the [`Node`] handle, the one answer to "who runs this user: here, elsewhere,
//! nobody", and everything that crosses between nodes:
//!
//! - here: [`Node`], which asks this node's actor first and the user's owner otherwise, and
//!   hands a front-door change to whoever runs the user.
//! - `join`: the join sequence of a start (listen, then claim and load, then serve) and the
//!   leaving of a shutdown.
//! - `leases`: the renewal loop (claim, renew, release, rebalance, heartbeat).
//! - `notices`: listening on the `LISTEN/NOTIFY` channel that tells a user's owner of
//!   front-door changes; `changes`: the telling; `sealed`: how a notice proves it comes from a
//!   node (and hides its user id).
//! - `forward`: admin calls about one user, forwarded to its owner; `credential`: what such a
//!   call carries instead of the admin token, and the proof on its answer; `replay`: the
//!   nonces already spent.
//!
//! Which shards this process holds, and the fence of its writes, are `cluster`'s (below the
//! actors, which ask it before acting). Must not touch: actors' state (it tells the
//! supervisor which users and shards came and went), HTTP routing (the front door calls in
//! here), the rows (the store writes them).

mod changes;
mod credential;
mod forward;
mod join;
mod leases;
mod notices;
mod replay;
mod sealed;

use std::{fmt, sync::Arc};

use secrecy::SecretString;

pub use changes::Change;
pub use credential::{Call, Refused};
pub use forward::{
    ACTOR_REFRESH_ROUTE, ACTOR_ROUTE, ANSWER_PROOF_HEADER, AdminCall, FORWARDED_HEADER, Relayed,
};
pub use join::{Joining, Membership};
pub use replay::SeenNonces;
pub use sealed::{Notice, Notices};

use crate::{
    actors::{ActorView, Supervisor},
    cluster::Ownership,
    store::{NodeIdentity, Store, StoreError},
    sync::{SyncDispatcher, resume_unfinished_syncs},
};

/// Why a question about a user could not be answered. Never holds a secret or a URL's
/// userinfo.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// This node could not ask its own actors.
    #[error(transparent)]
    Here(anyhow::Error),
    /// The owner could not be found or reached: try again.
    #[error("{0}")]
    Unavailable(String),
    /// Something answered at the owner's address without proving it holds the cluster's key.
    #[error("{0}")]
    Unproven(String),
}

/// Who runs a user, as a call about the user learned it.
pub enum Runs<T> {
    /// This node, with its own answer.
    Here(T),
    /// Another node, whose answer to the forwarded call is relayed.
    Elsewhere(Relayed),
    /// No node runs the user.
    Nobody,
}

/// This process in its cluster (a cluster of one on SQLite); cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub ownership: Arc<Ownership>,
    pub identity: NodeIdentity,
    store: Store,
    supervisor: Supervisor,
    sync: SyncDispatcher,
    /// Derives the keys of forwarded calls and of notices.
    admin_token: SecretString,
    /// For admin calls forwarded to a user's owner.
    http: reqwest::Client,
    /// Credentials of forwarded calls already accepted here: each is good for one call.
    forwarded: Arc<SeenNonces>,
    /// Seals the change notices this node sends.
    notices: Arc<Notices>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("ownership", &self.ownership)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What a [`Node`] is made of.
pub struct NodeParts {
    pub ownership: Arc<Ownership>,
    pub identity: NodeIdentity,
    pub store: Store,
    pub supervisor: Supervisor,
    pub sync: SyncDispatcher,
    pub admin_token: SecretString,
    pub notices: Arc<Notices>,
}

impl Node {
    pub fn new(parts: NodeParts) -> anyhow::Result<Self> {
        Ok(Self {
            ownership: parts.ownership,
            identity: parts.identity,
            store: parts.store,
            supervisor: parts.supervisor,
            sync: parts.sync,
            admin_token: parts.admin_token,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            forwarded: Default::default(),
            notices: parts.notices,
        })
    }

    /// The user's actor's view: this node's own, or its owner's answer.
    /// `already_forwarded`: the call came from another node (or an operator said it was
    /// forwarded), so it is answered here and never bounces.
    pub async fn actor(
        &self,
        user_id: &str,
        already_forwarded: bool,
    ) -> Result<Runs<ActorView>, NodeError> {
        let here = self
            .supervisor
            .get(user_id)
            .await
            .map_err(NodeError::Here)?;
        self.here_or_owner(here, AdminCall::Actor, user_id, already_forwarded)
            .await
    }

    /// Asks the user's actor to refresh now, here or at its owner.
    pub async fn refresh(
        &self,
        user_id: &str,
        already_forwarded: bool,
    ) -> Result<Runs<()>, NodeError> {
        let here = self.supervisor.refresh_now(user_id).await.then_some(());
        self.here_or_owner(here, AdminCall::Refresh, user_id, already_forwarded)
            .await
    }

    async fn here_or_owner<T>(
        &self,
        here: Option<T>,
        call: AdminCall,
        user_id: &str,
        already_forwarded: bool,
    ) -> Result<Runs<T>, NodeError> {
        if let Some(here) = here {
            return Ok(Runs::Here(here));
        }
        match forward::forward_admin(self, call, user_id, already_forwarded).await? {
            Some(relayed) => Ok(Runs::Elsewhere(relayed)),
            None => Ok(Runs::Nobody),
        }
    }

    /// Checks the credential of a forwarded `call` arriving at this node; answers its nonce.
    pub fn accept_forwarded(&self, header: &str, call: Call<'_>) -> Result<String, Refused> {
        forward::accept_forwarded(self, header, call)
    }

    /// The proof to send with the answer to a forwarded call of `nonce`.
    pub fn answer_proof(&self, nonce: &str, status: u16, body: &[u8]) -> String {
        forward::answer_proof(&self.admin_token, nonce, status, body)
    }

    /// Queues the push of every connected user's state: on a cluster every node (this one
    /// too) queues its own shards' users when it hears the notice; a single node queues all,
    /// in the background.
    pub async fn resync_all(&self) -> Result<(), StoreError> {
        if self.ownership.is_cluster() {
            return self.notices.send(&self.store, &Notice::Resync).await;
        }
        let (store, sync) = (self.store.clone(), self.sync.clone());
        tokio::spawn(async move {
            if let Err(e) = resume_unfinished_syncs(&store, &sync, false, None).await {
                tracing::error!(error = %e, "resync could not queue every user");
            }
        });
        Ok(())
    }
}
