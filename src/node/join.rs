//! A node's arrival in its cluster and its leaving. Arriving: listen for notices first, then
//! claim shards and load their users, and only then let the front door open, so a change it
//! takes is handled here or told to its owner, never to nobody. A single node has nothing to
//! join: it queues its unfinished pushes instead. Leaving: the lease loop stops and the
//! leases are released, so the other nodes claim them at once. Must not touch: the front door
//! (the caller opens it after `join`), the actors' work (the caller ends it before `leave`).

use std::{sync::Arc, time::Duration};

use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Node,
    leases::LeaseLoop,
    notices::{NoticeTargets, listen},
    sealed::Notice,
};
use crate::{metrics::Metrics, sync};

/// What a join started, for the leaving.
pub struct Membership {
    /// Stops the lease loop, which renews until the work has ended.
    stop_leases: CancellationToken,
    /// The lease loop of a cluster node; `None` on a single node.
    leases: Option<JoinHandle<()>>,
}

/// How a node joins.
pub struct Joining {
    /// Where the notices are listened for: `DATABASE_SESSION_URL`, a session of its own (a
    /// pooler in transaction mode would drop the `LISTEN`).
    pub database_url: String,
    pub lease_ttl: Duration,
    pub metrics: Arc<Metrics>,
    /// Stops listening for notices (with the sync dispatcher, last).
    pub stop_listening: CancellationToken,
    /// Whether a microservice is configured, for a single node's resumed pushes.
    pub microservice: bool,
}

impl Node {
    /// Joins the cluster (a cluster node) or queues the unfinished pushes (a single node);
    /// returns once the front door may open.
    pub async fn join(&self, joining: Joining) -> Membership {
        let stop_leases = CancellationToken::new();
        if !self.ownership.is_cluster() {
            // Queued before the front door opens, so a change made through it is never
            // followed by a second, redundant push from the resume. (A cluster node resumes
            // each shard's pushes as it gains the shard.)
            sync::resume_at_start(&self.store, &self.sync, joining.microservice).await;
            return Membership {
                stop_leases,
                leases: None,
            };
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        self.listen_first(&joining, wake.clone()).await;
        let lease_loop = LeaseLoop {
            store: self.store.clone(),
            ownership: self.ownership.clone(),
            supervisor: self.supervisor.clone(),
            node: self.identity.clone(),
            ttl: joining.lease_ttl,
            metrics: joining.metrics.clone(),
            wake,
            notices: self.notices.clone(),
        };
        tracing::info!(node = %self.identity.node_id, "joining the cluster");
        let leases = tokio::spawn(lease_loop.run(stop_leases.clone()));
        // The front door opens once the node has claimed its shards, loaded their users and
        // queued their unfinished pushes, as a single node opens it after queueing its own:
        // a change it takes is then handled here or told to its owner, never to nobody,
        // and never pushed twice by the resume. Bounded: a slow database or a large load
        // lets the node serve (answering 503 on /readyz) rather than hang.
        let wait = joining.lease_ttl * 2;
        if !wait_until(wait, || self.supervisor.is_loaded()).await {
            tracing::warn!(
                waitedMs = wait.as_millis() as u64,
                "shards not loaded yet; serving meanwhile"
            );
        }
        Membership {
            stop_leases,
            leases: Some(leases),
        }
    }

    /// Starts listening for notices and waits, bounded, until the first `LISTEN` is in place.
    async fn listen_first(&self, joining: &Joining, wake: Arc<tokio::sync::Notify>) {
        let targets = NoticeTargets {
            node: self.clone(),
            wake,
        };
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        tokio::spawn(listen(
            joining.database_url.clone(),
            targets,
            joining.stop_listening.clone(),
            listening_tx,
        ));
        // Claims wait for the listener: a user written by another node after a claim's
        // load would otherwise be told to a node not yet listening, and be nobody's
        // (seen in the failover test once connects got faster). Bounded like the load;
        // past it, the listener's first connection reloads whatever is held by then.
        let wait = joining.lease_ttl * 2;
        if tokio::time::timeout(wait, listening).await.is_err() {
            tracing::warn!(
                waitedMs = wait.as_millis() as u64,
                "cluster notices not heard yet; claiming shards meanwhile"
            );
        }
    }
}

impl Membership {
    /// Stops renewing and releases every lease, telling the other nodes to claim them now.
    /// Nothing to do on a single node.
    pub async fn leave(self, node: &Node) {
        let Some(leases) = self.leases else {
            return;
        };
        self.stop_leases.cancel();
        let _ = leases.await;
        match node.store.release_all(&node.identity).await {
            Ok(()) => {
                let shards = node.ownership.clear().len();
                tracing::info!(shards, "shard leases released");
                let _ = node.notices.send(&node.store, &Notice::Rebalance).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release shard leases; they lapse after the TTL")
            }
        }
    }
}

/// Polls `done` every 20 ms for at most `wait`; whether it became true.
async fn wait_until(wait: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
