//! The lease loop of a cluster node: every third of the TTL (or at once when another node
//! hands shards over), one statement renews what it holds, claims what its share still lacks,
//! releases shards it has drained, and beats its heart. Its answer says which shards came and
//! went (the supervisor loads or drops their users) and how many nodes are live, from which
//! the node's share follows: `shards / nodes`, plus one for the first `shards % nodes` nodes
//! in (node id, process token) order, so shares sum to the shard count and differ by at most
//! one. A node above its share drains the extra shards (no new work starts for them) and
//! releases them at a later renewal, once their work in flight has ended. Must not touch:
//! actors (it sends the supervisor the shards), the front door.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::sealed::{Notice, Notices};
use crate::{
    actors::Supervisor,
    cluster::{Ownership, safety_margin},
    ids::Shard,
    metrics::Metrics,
    store::{LeaseRequest, NodeIdentity, Store},
};

/// The renewal period and the TTL's validity here, for a lease TTL.
fn lease_timing(ttl: Duration) -> (Duration, Duration) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    (period, ttl.saturating_sub(safety_margin(ttl)))
}

/// What the loop runs with.
pub struct LeaseLoop {
    pub store: Store,
    pub ownership: Arc<Ownership>,
    pub supervisor: Supervisor,
    pub node: NodeIdentity,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
    /// Notified by a rebalance notice: renew now rather than at the next period.
    pub wake: Arc<Notify>,
    /// Seals the rebalance notice.
    pub notices: Arc<Notices>,
}

impl LeaseLoop {
    /// Renews until `stop`; the caller then releases the leases (after its work has ended).
    pub async fn run(self, stop: CancellationToken) {
        let (period, valid_for) = lease_timing(self.ttl);
        let shard_count = i64::from(self.ownership.shard_count());
        let mut claim = 0i64;
        let mut round = 0u64;
        let mut renewed_at_once = false;
        loop {
            let release = self.ownership.drained();
            let request = LeaseRequest {
                claim,
                release: release.clone(),
                actors: self.metrics.actors.get(),
            };
            let sent = Instant::now();
            let renewal = tokio::time::timeout(
                period,
                self.store
                    .renew_leases(&self.node, self.ttl.as_secs_f64(), &request),
            )
            .await;
            let mut again_now = false;
            match renewal {
                Ok(Ok(grant)) => {
                    let (gained, lost) = self.ownership.apply(&grant.held, sent + valid_for);
                    if !lost.is_empty() {
                        let taken = lost.iter().filter(|s| !release.contains(s)).count();
                        if taken > 0 {
                            tracing::warn!(shards = taken, "shard leases lost to other nodes");
                        }
                        self.supervisor.shards_lost(lost);
                    }
                    // Round 0 only announces the node; round 1 is its first claim, after
                    // which it is ready once those shards' users are loaded.
                    if !gained.is_empty() || round == 1 {
                        if !gained.is_empty() {
                            tracing::info!(shards = gained.len(), "shard leases gained");
                        }
                        self.supervisor.shards_gained(gained, round == 1);
                    }
                    self.metrics.shards_owned.set(grant.held.len() as i64);
                    let nodes = grant.other_nodes + 1;
                    let share = shard_count / nodes + i64::from(grant.rank < shard_count % nodes);
                    claim = self.rebalance(share);
                    if !release.is_empty() {
                        tracing::info!(shards = release.len(), "shard leases handed over");
                        let _ = self.notices.send(&self.store, &Notice::Rebalance).await;
                    }
                    // The first round only learns the cluster's size; a share still to claim
                    // (a node left, or handed shards over) is claimed at once, not a period
                    // later, but only once in a row: the shards may all be held elsewhere.
                    again_now = round == 0 || (claim > 0 && !renewed_at_once);
                    round += 1;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew shard leases");
                }
                Err(_) => tracing::warn!("cannot renew shard leases: timed out"),
            }
            renewed_at_once = again_now;
            if again_now {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Drains the shards held beyond `share` and answers how many more to claim.
    fn rebalance(&self, share: i64) -> i64 {
        let held = self.ownership.held_shards();
        let active: Vec<Shard> = held
            .iter()
            .copied()
            .filter(|&s| self.ownership.act_shard_open(s))
            .collect();
        let extra = active.len() as i64 - share;
        if extra > 0 {
            // The highest-numbered ones: any choice works, a stable one moves fewer users.
            let drain: Vec<Shard> = active.iter().rev().take(extra as usize).copied().collect();
            self.ownership.drain(&drain);
            return 0;
        }
        // Shards still draining count as held until released: claim only what that leaves.
        (share - held.len() as i64).max(0)
    }
}
